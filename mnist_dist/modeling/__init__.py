"""What is trained: the models, the optimizers and their learning-rate
schedules, and the weight average."""
