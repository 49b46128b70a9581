/* The CUDA backend's own source, host code and kernels, built for the CPU over tests/cuda_emu
 * (cuda_emu.h for the kernels, cuda_emu_runtime.h for the runtime API): a module named like the
 * real one, in its own directory, that test_cuda loads to run its GPU tests without a GPU. */
#define BSI_CUDA_EMU 1
#include "../../backends/cuda/cuda_backend.cu"
