"""SecretFlow SPU engine for the MPC protocol (`protocol.engine=spu`): ABY3 (PUMA), Cheetah and SEMI2K.

Two halves: `engine` runs in the main environment (writes the checkpoint, starts the driver, makes rows);
`driver` and `approximations` run in `.venv-spu` (spu 0.9.5, jax 0.4.34, numpy<2, Flax transformers 4.46.3).
The main environment never imports `driver` or `approximations` (they import spu, jax and flax).
"""
