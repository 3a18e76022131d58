"""Planning a run for a chip that is not here: the accelerators' own
compilers run without the device (`accelerators`), and the training step
compiled and measured with them (`compile_plan`).
"""
