/* The TFLite Micro engine behind the runtime's model ABI (firmware/README.md): the .tflite lives in flash
 * (model_data.S), a MicroMutableOpResolver holds exactly the ops the model uses (tflm_ops.h, generated),
 * and the interpreter allocates its tensors once, at boot, in the runtime's arena. The runtime then sees
 * the same model.h as with the native engine: model_init() places the I/O tensors, model_run() is one
 * Invoke(), and the counted window is Invoke() alone. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <new>

#include "model.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tflm_ops.h"

extern "C" const unsigned char model_tflite[];
extern "C" void harness_layer_end(uint32_t index); /* runtime/main.c, profiling builds */

model_tensor_t model_inputs[MODEL_NUM_INPUTS];
model_tensor_t model_outputs[MODEL_NUM_OUTPUTS];

namespace {

using Resolver = tflite::MicroMutableOpResolver<TFLM_NUM_OPS>;

/* Static storage, constructed in place at model_init: no heap, no global constructors. */
alignas(Resolver) unsigned char resolver_mem[sizeof(Resolver)];
alignas(tflite::MicroInterpreter) unsigned char interp_mem[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter *interp;
uint32_t arena_used, arena_needed;

#if HARNESS_LAYER_PROFILE
/* A profiling build (bench --layers): TFLM brackets each operator's Invoke with BeginEvent/EndEvent; the
 * end of each outermost event stamps the runtime's counter for that layer, as the native engine's
 * MODEL_LAYER_END does. Nested events (kernels' own) are not layers. */
class LayerStamps : public tflite::MicroProfilerInterface {
  public:
    uint32_t BeginEvent(const char *) override
    {
        return depth_++;
    }
    void EndEvent(uint32_t) override
    {
        if (--depth_ == 0 && layer_ < MODEL_NUM_LAYERS) {
            harness_layer_end(layer_++);
        }
    }
    void start()
    {
        layer_ = 0;
        depth_ = 0;
    }

  private:
    uint32_t layer_ = 0, depth_ = 0;
};
alignas(LayerStamps) unsigned char stamps_mem[sizeof(LayerStamps)];
LayerStamps *stamps;
#endif

/* What TFLM logged first (MicroPrintf), for the error the host shows when start-up or an inference fails;
 * emptied once start-up succeeds. */
char log_buf[96];

bool place(model_tensor_t *spec, const TfLiteTensor *t, const int8_t *arena)
{
    if (t == nullptr || t->type != kTfLiteInt8 || t->data.int8 == nullptr) {
        return false;
    }
    spec->offset = (uint32_t)(t->data.int8 - arena);
    return spec->bytes == t->bytes;
}

}  // namespace

extern "C" void DebugLog(const char *format, va_list args)
{
    char line[sizeof log_buf];
    vsnprintf(line, sizeof line, format, args);
    /* The first message is the cause (later ones say what failed because of it); MicroPrintf ends each
     * with a bare "\r\n". */
    if (log_buf[0] == '\0' && line[strspn(line, "\r\n ")] != '\0') {
        memcpy(log_buf, line, sizeof log_buf);
    }
}

extern "C" int DebugVsnprintf(char *buffer, size_t buf_size, const char *format, va_list vlist)
{
    return vsnprintf(buffer, buf_size, format, vlist);
}

/* Virtual destructors name operator delete; nothing here is ever freed. */
void operator delete(void *) noexcept {}
void operator delete(void *, size_t) noexcept {}
extern "C" void __cxa_pure_virtual(void)
{
    model_failed("pure virtual call");
}

/* newlib's vsnprintf names malloc (it never calls it for a plain string): there is no heap, so any call
 * that did would fail rather than grow into the stack. */
extern "C" void *_sbrk(ptrdiff_t)
{
    return (void *)-1;
}

/* TFLM's TFLITE_ABORT and failed TFLITE_ASSERT_FALSE end here: report, not hang. */
extern "C" void abort(void)
{
    model_failed(log_buf[0] ? log_buf : "TFLM aborted");
}

static bool allocate(const tflite::Model *model, int8_t *arena, uint32_t arena_bytes)
{
    Resolver *resolver = reinterpret_cast<Resolver *>(resolver_mem);
#if HARNESS_LAYER_PROFILE
    stamps = new (stamps_mem) LayerStamps();
    interp = new (interp_mem)
        tflite::MicroInterpreter(model, *resolver, (uint8_t *)arena, arena_bytes, nullptr, stamps);
#else
    interp = new (interp_mem) tflite::MicroInterpreter(model, *resolver, (uint8_t *)arena, arena_bytes);
#endif
    return interp->AllocateTensors() == kTfLiteOk;
}

#if TFLM_SIZING
/* The smallest arena (a multiple of 16) in which AllocateTensors succeeds. arena_used_bytes() is not
 * always enough: the memory planner's scratch, taken from the free arena while it plans and then freed,
 * is not counted in it (mlperf_ad01 needs more than it reports). Success grows with the size, so: up from
 * arena_used_bytes() in doubling steps, then bisect. */
static uint32_t smallest_arena(const tflite::Model *model, int8_t *arena, uint32_t used, uint32_t limit)
{
    uint32_t bad = (used + 15u) / 16u * 16u - 16u, good = bad + 16u, step = 16u;
    while (good < limit && !allocate(model, arena, good)) {
        bad = good;
        step *= 2u;
        good = bad + step < limit ? bad + step : limit;
    }
    while (good - bad > 16u) {
        uint32_t mid = bad + (good - bad) / 32u * 16u;
        if (allocate(model, arena, mid)) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    return good;
}
#endif

extern "C" int model_init(int8_t *arena, uint32_t arena_bytes, const char **why)
{
    const tflite::Model *model = tflite::GetModel(model_tflite);
    if (model->version() != TFLITE_SCHEMA_VERSION) {
        *why = "the .tflite schema version is not the one TFLM was built for";
        return 1;
    }
    Resolver *resolver = new (resolver_mem) Resolver();
#define TFLM_ADD(call)                         \
    if (resolver->call != kTfLiteOk) {         \
        *why = "registering " #call " failed"; \
        return 2;                              \
    }
    TFLM_OPS(TFLM_ADD)
#undef TFLM_ADD
    if (!allocate(model, arena, arena_bytes)) {
        static char msg[sizeof log_buf + 48];
        /* the sizes first: the host's error frame keeps 96 characters */
        snprintf(msg, sizeof msg, "AllocateTensors in a %lu B arena: %s", (unsigned long)arena_bytes,
                 log_buf[0] ? log_buf : "failed");
        *why = msg;
        return 3;
    }
    arena_used = (uint32_t)interp->arena_used_bytes();
    arena_needed = arena_bytes;
#if TFLM_SIZING
    arena_needed = smallest_arena(model, arena, arena_used, arena_bytes);
    if (!allocate(model, arena, arena_bytes)) { /* back to the whole arena: the inference runs there */
        *why = "AllocateTensors failed on the second try";
        return 3;
    }
#endif
    for (int i = 0; i < MODEL_NUM_INPUTS; i++) {
        model_inputs[i] = model_input_specs[i];
        if (!place(&model_inputs[i], interp->input(i), arena)) {
            *why = "an input tensor is not the int8 tensor the host expects";
            return 4;
        }
    }
    for (int i = 0; i < MODEL_NUM_OUTPUTS; i++) {
        model_outputs[i] = model_output_specs[i];
        if (!place(&model_outputs[i], interp->output(i), arena)) {
            *why = "an output tensor is not the int8 tensor the host expects";
            return 4;
        }
    }
    log_buf[0] = '\0';
    return 0;
}

extern "C" uint32_t model_arena_used(void)
{
    return arena_used;
}

extern "C" uint32_t model_arena_needed(void)
{
    return arena_needed;
}

extern "C" void model_run(int8_t *arena)
{
    (void)arena;
#if HARNESS_LAYER_PROFILE
    stamps->start();
#endif
    if (interp->Invoke() != kTfLiteOk) {
        model_failed(log_buf[0] ? log_buf : "Invoke failed");
    }
}
