"""Quantization schemes (DESIGN §7): a registry; each scheme is one file in schemes/. Also
snap.py (snap a reference onto an RTN grid: the `-qat` arm) and export_gguf.py (write any model
folder as a llama.cpp GGUF file); groups.py holds what a group size means for every uniform
scheme; plan.py says which quants and models the survival diagnostics cover."""
