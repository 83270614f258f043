"""The layers below the models: the kernel choice (KernelOptions -> Kernels), paged attention's contract and
PyTorch reference, the matmul seam every weight format plugs into (Linear), and the SwiGLU gating dispatcher."""
