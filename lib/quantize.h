/* The reference Q1_0 quantizer of FORMAT.md, and whole-file conversion (bonsai quantize). */
#ifndef BONSAI_QUANTIZE_H
#define BONSAI_QUANTIZE_H

#include "internal.h"

/*
 * Quantizes n values (n a multiple of 128) to n / 128 Q1_0 blocks of 18 bytes at out: per block
 * d = sum|x_j| / 128 (accumulated in fp32 in index order, rounded to fp16 to nearest even) and
 * bit j = (x_j >= 0), so +0 and -0 both give +d and NaN gives -d.
 */
void bsi_quantize_q1_0(const float *x, int64_t n, uint8_t *out);

typedef struct bsi_quantize_options {
    bool keep_unconvertible; /* copy matrices that cannot become Q1_0 instead of failing */
    bonsai_progress_fn progress;
    void *progress_user_data;
} bsi_quantize_options;

/* Converts every F32/F16/BF16 matrix (2-D, rows a multiple of 128 values) of `in_path` to Q1_0,
 * keeps 1-D tensors (norms) and already-quantized matrices as they are, copies all metadata, and
 * writes `out_path`, one tensor at a time. Fails naming the tensor it cannot convert. */
bonsai_status bsi_quantize_file(const char *in_path, const char *out_path,
                                const bsi_quantize_options *opt, uint64_t *n_converted);

#endif
