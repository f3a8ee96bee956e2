"""The commands beside training: the self-test of the distributed math,
predict (and the image files it reads), and the device's matmul rate."""
