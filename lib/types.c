#include "types.h"

static const bsi_type_traits traits_f32 = {"F32", 1, 4};
static const bsi_type_traits traits_f16 = {"F16", 1, 2};
static const bsi_type_traits traits_q8_0 = {"Q8_0", 32, 34};
static const bsi_type_traits traits_bf16 = {"BF16", 1, 2};
static const bsi_type_traits traits_q1_0 = {"Q1_0", 128, 18};

const bsi_type_traits *bsi_type_traits_of(uint32_t type)
{
    switch (type) {
    case BONSAI_TENSOR_F32: return &traits_f32;
    case BONSAI_TENSOR_F16: return &traits_f16;
    case BONSAI_TENSOR_Q8_0: return &traits_q8_0;
    case BONSAI_TENSOR_BF16: return &traits_bf16;
    case BONSAI_TENSOR_Q1_0: return &traits_q1_0;
    }
    return NULL;
}

const char *bonsai_tensor_type_name(uint32_t type)
{
    const bsi_type_traits *t = bsi_type_traits_of(type);
    return t ? t->name : NULL;
}

const char *bsi_foreign_type_name(uint32_t type)
{
    /* Ids as ggml numbers them; 40 and 42 are ambiguous (see FORMAT.md section 2). */
    static const char *const names[] = {
        [2] = "Q4_0",
        [3] = "Q4_1",
        [6] = "Q5_0",
        [7] = "Q5_1",
        [9] = "Q8_1",
        [10] = "Q2_K",
        [11] = "Q3_K",
        [12] = "Q4_K",
        [13] = "Q5_K",
        [14] = "Q6_K",
        [15] = "Q8_K",
        [16] = "IQ2_XXS",
        [17] = "IQ2_XS",
        [18] = "IQ3_XXS",
        [19] = "IQ1_S",
        [20] = "IQ4_NL",
        [21] = "IQ3_S",
        [22] = "IQ2_S",
        [23] = "IQ4_XS",
        [24] = "I8",
        [25] = "I16",
        [26] = "I32",
        [27] = "I64",
        [28] = "F64",
        [29] = "IQ1_M",
        [34] = "TQ1_0",
        [35] = "TQ2_0",
        [39] = "MXFP4",
        [40] = "NVFP4 upstream, Q1_0_g32 in PrismML's first fork",
        [42] = "Q2_0, ternary Bonsai",
    };
    if (type < sizeof names / sizeof names[0] && names[type]) return names[type];
    if (type == 142) return "PQ2_0, PrismML private";
    if (type == 143) return "PTQ1_0, PrismML private";
    return NULL;
}

uint32_t bsi_value_type_size(uint32_t type)
{
    switch (type) {
    case BONSAI_VALUE_U8:
    case BONSAI_VALUE_I8:
    case BONSAI_VALUE_BOOL: return 1;
    case BONSAI_VALUE_U16:
    case BONSAI_VALUE_I16: return 2;
    case BONSAI_VALUE_U32:
    case BONSAI_VALUE_I32:
    case BONSAI_VALUE_F32: return 4;
    case BONSAI_VALUE_U64:
    case BONSAI_VALUE_I64:
    case BONSAI_VALUE_F64: return 8;
    }
    return 0;
}

const char *bonsai_value_type_name(bonsai_value_type type)
{
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    if ((unsigned)type < sizeof names / sizeof names[0]) return names[type];
    return "?";
}
