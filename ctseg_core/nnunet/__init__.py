"""nnU-Net v2 model folders (and TotalSegmentator's, which are such folders) run inside ctseg,
and ctseg's 3D runs written as them.

``folder`` reads and checks a model folder (dataset.json, plans.json, fold_<k>/checkpoint_*.pth),
``plans`` turns the plans into the network and nnU-Net's preprocessing, ``predict`` runs the
sliding window over the folds and brings the labels back onto the CT's grid, ``labels`` maps the
model's label values to ctseg's 117 TotalSegmentator v2 structures and combines TotalSegmentator's
five part models; ``export`` writes a ctseg 3D run as a folder nnU-Net's predictor runs;
``finetune`` starts a ctseg run from a model folder's weights. Nothing
here imports nnunetv2: the folder is read with torch, numpy, scipy, scikit-image and
dynamic-network-architectures only.
"""
