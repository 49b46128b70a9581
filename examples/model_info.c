/* model_info: load a GGUF model with libbonsai and print what it is.
 *
 *   cc model_info.c $(pkg-config --cflags --libs bonsai) -o model_info
 *   ./model_info model.gguf
 */
#include <bonsai/bonsai.h>

#include <inttypes.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    bonsai_model_params params;
    bonsai_model_params_init(&params);
    bonsai_model *model;
    bonsai_status st = bonsai_model_load(argv[1], &params, &model);
    if (st != BONSAI_OK) {
        fprintf(stderr, "error: %s\n", bonsai_last_error());
        return 1;
    }
    printf("%s: architecture '%s', %" PRIu64 " parameters, %u tokens, %" PRIu64 " tensors\n",
           argv[1], bonsai_model_architecture(model), bonsai_model_n_params(model),
           bonsai_model_n_vocab(model), bonsai_model_tensor_count(model));

    const bonsai_value *value;
    if (bonsai_model_meta_get(model, "general.name", &value) == BONSAI_OK) {
        const char *name;
        if (bonsai_value_get_string(value, &name, NULL) == BONSAI_OK) printf("name: %s\n", name);
    }
    bonsai_model_free(model);
    return 0;
}
