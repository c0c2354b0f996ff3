/* The device side of a benchmark: say HELLO, then serve requests forever. Measures each inference with
 * the board's counter, the peak stack by painting the stack region, the arena's high water by painting
 * the arena. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "board_config.h"
#include "model.h"
#include "protocol.h"

#define STACK_PAINT 0xC5C5C5C5u
#define ARENA_PAINT 0xA5u
#define MAX_REPS 120u /* STATS carries one 64-bit count per repetition in one frame */

/* An engine that allocates at boot (TFLM) says so with MODEL_HAS_INIT and reports the arena it needs and
 * what its allocator counts as used; the native engine's plan is static: both are its arena's size. */
#ifndef MODEL_HAS_INIT
#define MODEL_HAS_INIT 0
#endif
#ifndef MODEL_ARENA_NEEDED
#define MODEL_ARENA_NEEDED MODEL_ARENA_BYTES
#endif
#ifndef MODEL_ARENA_USED
#define MODEL_ARENA_USED MODEL_ARENA_BYTES
#endif
/* The native plan grows from the arena's start; TFLM also keeps persistent data at its end. */
#ifndef MODEL_ARENA_TWO_ENDED
#define MODEL_ARENA_TWO_ENDED 0
#endif

static int8_t arena[MODEL_ARENA_BYTES > 0 ? MODEL_ARENA_BYTES : 16]
    __attribute__((section(".arena"), aligned(16)));
/* The inputs as the host sent them. The planner may let later layers overwrite an input that is dead, so
 * each repetition starts from this copy (restored outside the timed window). Its own section: it is the
 * harness's memory, not the model's, and is reported apart. */
static int8_t inputs_copy[HARNESS_INPUT_BYTES] __attribute__((section(".harness"), aligned(4)));
static frame_t rx;
static uint8_t tx[PROTO_MAX_PAYLOAD];
static uint64_t counts[MAX_REPS];

#if HARNESS_LAYER_PROFILE
/* Counter at the end of each layer of the last repetition, from its start: a profiling build only, since
 * each stamp is a counter read of its own (the build is labelled as such on the host). */
static uint64_t layer_t0, layer_ends[MODEL_NUM_LAYERS > 0 ? MODEL_NUM_LAYERS : 1];

void harness_layer_end(uint32_t index)
{
    layer_ends[index] = board_counter_read() - layer_t0;
}
#endif
extern uint32_t __stack_start__, __stack_end__;

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint32_t put_str(uint8_t *p, const char *s)
{
    uint32_t n = (uint32_t)strlen(s);
    if (n > 63) {
        n = 63;
    }
    p[0] = (uint8_t)n;
    memcpy(p + 1, s, n);
    return n + 1;
}

static uint32_t put_tensor(uint8_t *p, const model_tensor_t *t)
{
    float scale = t->scale;
    uint32_t bits;
    memcpy(&bits, &scale, 4);
    put32(p, t->offset);
    put32(p + 4, t->bytes);
    put32(p + 8, bits);
    put32(p + 12, (uint32_t)t->zero_point);
    p[16] = t->ndim;
    for (int i = 0; i < 4; i++) {
        put32(p + 17 + 4 * i, (uint32_t)t->dims[i]);
    }
    return 33;
}

__attribute__((noinline)) static void paint_stack(void)
{
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *w = &__stack_start__; w < sp - 16; w++) {
        *w = STACK_PAINT;
    }
}

static uint32_t peak_stack(void)
{
    const uint32_t *w = &__stack_start__;
    while (w < &__stack_end__ && *w == STACK_PAINT) {
        w++;
    }
    return (uint32_t)((const char *)&__stack_end__ - (const char *)w);
}

/* The bytes the engine touched: the arena less its untouched end (an arena growing from its start) or
 * less its largest untouched gap (one growing from both ends). */
static uint32_t arena_high_water(void)
{
    uint32_t n = MODEL_ARENA_BYTES;
    while (n > 0 && (uint8_t)arena[n - 1] == ARENA_PAINT) {
        n--;
    }
#if MODEL_ARENA_TWO_ENDED
    uint32_t gap = MODEL_ARENA_BYTES - n;
    for (uint32_t i = 0, run = 0; i < n; i++) {
        run = (uint8_t)arena[i] == ARENA_PAINT ? run + 1 : 0;
        gap = run > gap ? run : gap;
    }
    return MODEL_ARENA_BYTES - gap;
#else
    return n;
#endif
}

/* Builds the HELLO payload in tx; returns its length. */
static uint32_t build_hello(void)
{
    uint32_t n = 0;
    put32(tx + n, PROTO_VERSION);
    put32(tx + n + 4, board_clock_hz());
    put32(tx + n + 8, MODEL_ARENA_NEEDED);
    put32(tx + n + 12, (uint32_t)((char *)&__stack_end__ - (char *)&__stack_start__));
    put32(tx + n + 16, MODEL_MACS);
    n += 20;
    n += put_str(tx + n, BOARD_NAME);
    n += put_str(tx + n, BOARD_CORE);
    n += put_str(tx + n, board_counter_source);
    n += put_str(tx + n, BUILD_ID);
    n += put_str(tx + n, MODEL_NAME);
    tx[n++] = MODEL_NUM_INPUTS;
    tx[n++] = MODEL_NUM_OUTPUTS;
    for (int i = 0; i < MODEL_NUM_INPUTS; i++) {
        n += put_tensor(tx + n, &model_inputs[i]);
    }
    for (int i = 0; i < MODEL_NUM_OUTPUTS; i++) {
        n += put_tensor(tx + n, &model_outputs[i]);
    }
    put32(tx + n, MODEL_ARENA_USED);
    n += 4;
    return n;
}

static void send_hello(uint8_t seq)
{
    uint32_t n = build_hello();
    proto_send(MSG_HELLO, seq, tx, (uint16_t)n);
}

/* A slice of HELLO: on a noisy link a 200-byte frame rarely arrives whole, short ones do. The slice
 * goes after the whole payload in tx (which is far larger than HELLO). */
static void send_hello_part(const frame_t *f)
{
    uint32_t n = build_hello();
    uint32_t off = f->length >= 4 ? (uint32_t)(f->payload[0] | (f->payload[1] << 8)) : 0;
    uint32_t max = f->length >= 4 ? (uint32_t)(f->payload[2] | (f->payload[3] << 8)) : 64;
    if (off > n) {
        off = n;
    }
    uint32_t len = n - off < max ? n - off : max;
    if (len > PROTO_MAX_PAYLOAD - 4 - n) {
        len = PROTO_MAX_PAYLOAD - 4 - n;
    }
    uint8_t *p = tx + n;
    p[0] = (uint8_t)n;
    p[1] = (uint8_t)(n >> 8);
    p[2] = (uint8_t)off;
    p[3] = (uint8_t)(off >> 8);
    memmove(p + 4, tx + off, len);
    proto_send(MSG_HELLO_PART_ANS, f->seq, p, (uint16_t)(4 + len));
}

static void set_input(const frame_t *f)
{
    if (f->length < 5 || f->payload[0] >= MODEL_NUM_INPUTS) {
        proto_error(f->seq, ERR_BAD_REQUEST, 0, 0, 0, 0, "SET_INPUT: bad index or length");
        return;
    }
    const model_tensor_t *t = &model_inputs[f->payload[0]];
    uint32_t off = get32(f->payload + 1), n = f->length - 5u;
    if (off > t->bytes || n > t->bytes - off) {
        proto_error(f->seq, ERR_OUT_OF_RANGE, off, n, t->bytes, 0, "SET_INPUT: chunk outside the input");
        return;
    }
    uint32_t base = 0;
    for (uint32_t i = 0; i < f->payload[0]; i++) {
        base += model_inputs[i].bytes;
    }
    memcpy(inputs_copy + base + off, f->payload + 5, n);
    tx[0] = MSG_SET_INPUT;
    proto_send(MSG_ACK, f->seq, tx, 1);
}

/* The last inference's figures, kept so that a repeated INFER (the host lost the answer and sent the
 * same request again: the same sequence number, nothing else in between) gets them again rather than a
 * second run. */
static uint32_t last_reps, last_stack, last_hw;
static int stats_kept;

static void send_stats(uint8_t seq)
{
    put32(tx, last_reps);
    put32(tx + 4, last_stack);
    put32(tx + 8, last_hw);
    for (uint32_t r = 0; r < last_reps; r++) {
        put32(tx + 12 + 8 * r, (uint32_t)counts[r]);
        put32(tx + 16 + 8 * r, (uint32_t)(counts[r] >> 32));
    }
    proto_send(MSG_STATS, seq, tx, (uint16_t)(12 + 8 * last_reps));
}

static void infer(const frame_t *f, int repeated)
{
    uint32_t reps = f->length >= 4 ? get32(f->payload) : 0;
    if (reps == 0 || reps > MAX_REPS) {
        proto_error(f->seq, ERR_BAD_REQUEST, reps, MAX_REPS, 0, 0, "INFER: repetitions out of range");
        return;
    }
    if (repeated && stats_kept && reps == last_reps) {
        send_stats(f->seq);
        return;
    }
    /* Received: the host now waits for the figures as long as the inference takes, not less. */
    tx[0] = MSG_INFER;
    proto_send(MSG_ACK, f->seq, tx, 1);
    for (uint32_t r = 0; r < reps; r++) {
        for (uint32_t i = 0, base = 0; i < MODEL_NUM_INPUTS; base += model_inputs[i].bytes, i++) {
            memcpy(arena + model_inputs[i].offset, inputs_copy + base, model_inputs[i].bytes);
        }
        /* Restarting the counter here fixes its phase to this instruction: QEMU's SysTick ticks every 40
         * instructions from the moment it is started, so a counter left running since boot would give the
         * same inference +-1 tick depending on how long the host took to send the input. */
        board_counter_start();
        uint64_t t0 = board_counter_read();
#if HARNESS_LAYER_PROFILE
        layer_t0 = t0;
#endif
        model_run(arena);
        counts[r] = board_counter_read() - t0;
    }
    last_reps = reps;
    last_stack = peak_stack();
    last_hw = arena_high_water();
    stats_kept = 1;
    send_stats(f->seq);
}

static void get_output(const frame_t *f)
{
    if (f->length < 7 || f->payload[0] >= MODEL_NUM_OUTPUTS) {
        proto_error(f->seq, ERR_BAD_REQUEST, 0, 0, 0, 0, "GET_OUTPUT: bad index or length");
        return;
    }
    const model_tensor_t *t = &model_outputs[f->payload[0]];
    uint32_t off = get32(f->payload + 1), n = (uint32_t)f->payload[5] | ((uint32_t)f->payload[6] << 8);
    if (off > t->bytes || n > t->bytes - off || n > PROTO_MAX_PAYLOAD - 5u) {
        proto_error(f->seq, ERR_OUT_OF_RANGE, off, n, t->bytes, 0, "GET_OUTPUT: chunk outside the output");
        return;
    }
    tx[0] = f->payload[0];
    put32(tx + 1, off);
    memcpy(tx + 5, arena + t->offset + off, n);
    proto_send(MSG_OUTPUT, f->seq, tx, (uint16_t)(5 + n));
}

/* GET_LAYERS (first u16) -> LAYERS (first u16, total u16, n x u64 counts at each layer's end). A build
 * without profiling answers total 0. */
static void get_layers(const frame_t *f)
{
#if HARNESS_LAYER_PROFILE
    const uint32_t total = MODEL_NUM_LAYERS;
#else
    const uint32_t total = 0;
#endif
    uint32_t first = f->length >= 2 ? (uint32_t)f->payload[0] | ((uint32_t)f->payload[1] << 8) : 0;
    if (first > total) {
        proto_error(f->seq, ERR_OUT_OF_RANGE, first, total, 0, 0, "GET_LAYERS: first layer out of range");
        return;
    }
    uint32_t n = total - first;
    if (n > (PROTO_MAX_PAYLOAD - 4u) / 8u) {
        n = (PROTO_MAX_PAYLOAD - 4u) / 8u;
    }
    tx[0] = (uint8_t)first;
    tx[1] = (uint8_t)(first >> 8);
    tx[2] = (uint8_t)total;
    tx[3] = (uint8_t)(total >> 8);
#if HARNESS_LAYER_PROFILE
    for (uint32_t i = 0; i < n; i++) {
        put32(tx + 4 + 8 * i, (uint32_t)layer_ends[first + i]);
        put32(tx + 8 + 8 * i, (uint32_t)(layer_ends[first + i] >> 32));
    }
#endif
    proto_send(MSG_LAYERS, f->seq, tx, (uint16_t)(4 + 8 * n));
}

void runtime_fault(uint32_t pc, uint32_t lr, uint32_t cfsr, uint32_t kind)
{
    static const char *const names[] = {"fault", "HardFault", "MemManage", "BusFault", "UsageFault", "unexpected IRQ"};
    proto_error(0, ERR_FAULT, pc, lr, cfsr, kind, names[kind < 6 ? kind : 0]);
}

/* The engine cannot go on (TFLM's AllocateTensors or Invoke failed): say why, unasked and then to every
 * request, so the host reports the engine's own words rather than a silent device. */
void model_failed(const char *why)
{
    proto_error(0, ERR_ENGINE, 0, 0, 0, 0, why);
    for (;;) {
        (void)proto_read(&rx);
        proto_error(rx.seq, ERR_ENGINE, 0, 0, 0, 0, why);
    }
}

int main(void)
{
    paint_stack();
    board_init();
    memset(arena, ARENA_PAINT, sizeof arena);
#if MODEL_HAS_INIT
    const char *why = "model_init failed";
    if (model_init(arena, MODEL_ARENA_BYTES, &why) != 0) {
        model_failed(why);
    }
#endif
    send_hello(0);
    int last_type = -1, last_seq = -1; /* the previous intact request */
    for (;;) {
        int err = proto_read(&rx);
        if (err) {
            proto_error(rx.seq, (uint16_t)err, 0, 0, 0, 0, err == ERR_BAD_CRC ? "bad CRC" : "frame too long");
            continue;
        }
        const int repeated = rx.type == last_type && rx.seq == last_seq;
        last_type = rx.type;
        last_seq = rx.seq;
        switch (rx.type) {
        case MSG_HELLO_REQ: send_hello(rx.seq); break;
        case MSG_HELLO_PART: send_hello_part(&rx); break;
        case MSG_SET_INPUT: stats_kept = 0; set_input(&rx); break;
        case MSG_INFER: infer(&rx, repeated); break;
        case MSG_GET_OUTPUT: get_output(&rx); break;
        case MSG_GET_LAYERS: get_layers(&rx); break;
        default: proto_error(rx.seq, ERR_BAD_REQUEST, rx.type, 0, 0, 0, "unknown request"); break;
        }
    }
}
