// bonsai.h alone must compile as C++ (-pedantic -Werror) and link with extern "C" names.
#include <bonsai/bonsai.h>

int main()
{
    bonsai_model_params p;
    bonsai_model_params_init(&p);
    bonsai_model *m = nullptr;
    bonsai_status st = bonsai_model_load("/nonexistent.gguf", &p, &m);
    return st == BONSAI_ERR_IO && m == nullptr && bonsai_last_error()[0] ? 0 : 1;
}
