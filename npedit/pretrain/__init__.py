"""Pretraining of the shapes world's toy models: the text-to-image teacher and the VLM judge.

`npedit pretrain teacher|judge --world shapes --out DIR` reproduces the weights shipped in
`npedit/assets/shapes/`.
"""
