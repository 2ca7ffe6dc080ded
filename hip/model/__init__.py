"""The HIP-EquiformerV2 model, its Hessian readout, baselines and checkpoint formats."""
