/* The one type every engine's model.h shares with the runtime (firmware/README.md, "The model ABI"). */
#ifndef MODEL_ABI_H
#define MODEL_ABI_H

#include <stdint.h>

typedef struct {
    uint32_t offset;  /* byte offset of the tensor in the arena */
    uint32_t bytes;   /* int8 elements */
    float scale;      /* quantization of the int8 tensor */
    int32_t zero_point;
    uint8_t ndim;
    int32_t dims[4];
} model_tensor_t;

#endif
