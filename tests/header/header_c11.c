/* bonsai.h alone must compile as strict C11 (-std=c11 -pedantic -Werror) and link. */
#include <bonsai/bonsai.h>

int main(void)
{
    bonsai_model_params p;
    bonsai_model_params_init(&p);
    return p.struct_size == sizeof p && bonsai_abi_version() == BONSAI_ABI_VERSION ? 0 : 1;
}
