"""glmv's CPU fast path in bfloat16: oneDNN-packed matmul weights (linear), C kernels (kernels.c, built by build, called
through ops) and process settings for CPU serving (runtime). docs/ENGINE.md, "On the CPU", says what each does."""
