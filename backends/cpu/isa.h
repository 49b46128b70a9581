/* Instruction-set variants of the CPU kernels, detected at run time (CPUID + XGETBV on x86). */
#ifndef BONSAI_CPU_ISA_H
#define BONSAI_CPU_ISA_H

#include <stdbool.h>

typedef enum bsi_isa {
    BSI_ISA_SCALAR = 0,
    BSI_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    BSI_ISA_AVX512 = 2, /* AVX-512 F/BW/VL + VNNI */
    BSI_ISA_NEON = 3,   /* AArch64 Advanced SIMD */
    BSI_ISA_COUNT
} bsi_isa;

const char *bsi_isa_name(bsi_isa isa);
/* Parses "scalar", "avx2", "avx512", "neon"; -1 when unknown. */
int bsi_isa_parse(const char *name);
/* Compiled in, and the CPU and the OS support it. */
bool bsi_isa_available(bsi_isa isa);
/* The best available ISA, or the one BONSAI_CPU_ISA names when it is available (an unavailable or
 * unknown name falls back to the best, and `*forced_ok` says whether the request was honoured).
 * Decided once per process, at the first call. */
bsi_isa bsi_isa_select(bool *forced_ok);

#endif
