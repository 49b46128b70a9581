/* fp16 / bf16 <-> fp32 conversions used by the reader's users, the quantizer and the kernels. */
#ifndef BONSAI_HALF_H
#define BONSAI_HALF_H

#include <stdint.h>

/* fp16 -> fp32, exact. */
float bsi_fp16_to_fp32(uint16_t h);
/* fp32 -> fp16, round to nearest even; overflow gives infinity, NaN stays NaN. */
uint16_t bsi_fp32_to_fp16(float f);

#endif
