"""What every part stands on: the errors and exit codes, local or gs:// paths
and the workdir, the console, and the one door to TensorFlow's internals.
Imports nothing of the rest of the package."""
