"""Models: the registry (`registry`), what an architecture is (`spec`), the from-scratch
CNNs (`scratch`), EfficientNet-Lite and its ImageNet weights (`efficientnet_lite`,
`efficientnet_lite_weights`, read by `torch_checkpoint`), transfer learning on them
(`pretrained`) and the models that need no training (`builtin`)."""
