"""Python-backend runners copied into Triton model repositories for machines
whose Triton has no native backend for the artifact (see triton_repository)."""
