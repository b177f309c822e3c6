"""nnU-Net v2 model folders: read into ctseg, and ctseg runs written as them."""
