"""The configs, one file each with get_config(); installed as
mnist_dist.configs (setup.cfg), so `--config=NAME` finds them anywhere."""
