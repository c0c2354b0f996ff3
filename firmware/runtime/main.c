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

/* The last inference's figures, kept so that a repeated INFER (the host lost the answer and sent the
 * same request again: the same sequence number, nothing else in between) gets them again rather than a
 * second run, and so that they can be sent in slices. stats_seq is the INFER's sequence number. */
static uint32_t last_reps, last_stack, last_hw;
static int stats_kept;
static uint8_t stats_seq;

/* Builds the STATS payload in tx; returns its length. */
static uint32_t build_stats(void)
{
    put32(tx, last_reps);
    put32(tx + 4, last_stack);
    put32(tx + 8, last_hw);
    for (uint32_t r = 0; r < last_reps; r++) {
        put32(tx + 12 + 8 * r, (uint32_t)counts[r]);
        put32(tx + 16 + 8 * r, (uint32_t)(counts[r] >> 32));
    }
    return 12 + 8 * last_reps;
}

/* Slices of a long answer: on a noisy link a 200-byte frame rarely arrives whole, short ones do.
 * HELLO_PART (offset u16, max u16, count u8, what u8, tag u8) sends `count` slices of `max` bytes from
 * `offset` back to back (count 1 when left out), each (total u16, offset u16, bytes), of HELLO (what
 * 0x81, the default) or of the kept STATS of the INFER whose sequence number is `tag` (what 0x83). A
 * slice goes after the whole payload in tx. */
static void send_part(const frame_t *f)
{
    const uint32_t what = f->length >= 6 ? f->payload[5] : MSG_HELLO;
    uint32_t n;
    if (what == MSG_HELLO) {
        n = build_hello();
    } else if (what == MSG_STATS && f->length >= 7 && stats_kept && f->payload[6] == stats_seq) {
        n = build_stats();
    } else {
        proto_error(f->seq, ERR_OUT_OF_RANGE, what, stats_kept, stats_seq, 0, "HELLO_PART: no such answer kept");
        return;
    }
    uint32_t off = f->length >= 4 ? (uint32_t)(f->payload[0] | (f->payload[1] << 8)) : 0;
    uint32_t max = f->length >= 4 ? (uint32_t)(f->payload[2] | (f->payload[3] << 8)) : 64;
    uint32_t count = f->length >= 5 && f->payload[4] > 0 ? f->payload[4] : 1;
    if (max == 0 || max > PROTO_MAX_PAYLOAD - 4 - n) {
        max = PROTO_MAX_PAYLOAD - 4 - n;
    }
    do {
        if (off > n) {
            off = n;
        }
        const uint32_t len = n - off < max ? n - off : max;
        uint8_t *p = tx + n;
        p[0] = (uint8_t)n;
        p[1] = (uint8_t)(n >> 8);
        p[2] = (uint8_t)off;
        p[3] = (uint8_t)(off >> 8);
        memmove(p + 4, tx + off, len);
        proto_send(MSG_HELLO_PART_ANS, f->seq, p, (uint16_t)(4 + len));
        off += len;
    } while (--count > 0 && off < n);
}

/* The input bytes of tensor `index` from its first byte, in inputs_copy. */
static int8_t *input_base(uint32_t index)
{
    uint32_t base = 0;
    for (uint32_t i = 0; i < index; i++) {
        base += model_inputs[i].bytes;
    }
    return inputs_copy + base;
}

/* SET_INPUT answers ACK or an error; PUT_INPUT stays silent either way (its chunks come back to back, and
 * a board that transmitted would miss the bytes of the next one), and the host's CHECK asks which landed.
 * Returns 1 when the chunk was stored. */
static int set_input(const frame_t *f, int quiet)
{
    if (f->length < 5 || f->payload[0] >= MODEL_NUM_INPUTS) {
        if (!quiet) {
            proto_error(f->seq, ERR_BAD_REQUEST, 0, 0, 0, 0, "SET_INPUT: bad index or length");
        }
        return 0;
    }
    const model_tensor_t *t = &model_inputs[f->payload[0]];
    uint32_t off = get32(f->payload + 1), n = f->length - 5u;
    if (off > t->bytes || n > t->bytes - off) {
        if (!quiet) {
            proto_error(f->seq, ERR_OUT_OF_RANGE, off, n, t->bytes, 0, "SET_INPUT: chunk outside the input");
        }
        return 0;
    }
    memcpy(input_base(f->payload[0]) + off, f->payload + 5, n);
    if (!quiet) {
        tx[0] = MSG_SET_INPUT;
        proto_send(MSG_ACK, f->seq, tx, 1);
    }
    return 1;
}

/* LOAD_INPUT (index u8, file offset u32[, path]) -> ACK: the whole input read from a host file by
 * semihosting, on QEMU, where the emulated UART moves a byte in ~0.1 ms; refused on a board. The path is
 * sent once and kept (in the harness's memory, like the inputs' copy), so each load is a short frame. */
static char stage_path[256] __attribute__((section(".harness")));
static uint32_t stage_len;

__attribute__((noinline)) static void load_input(const frame_t *f)
{
    if (!BOARD_QEMU) {
        proto_error(f->seq, ERR_BAD_REQUEST, f->type, 0, 0, 0, "LOAD_INPUT: a QEMU build only");
        return;
    }
    if (f->length < 5 || f->payload[0] >= MODEL_NUM_INPUTS) {
        proto_error(f->seq, ERR_BAD_REQUEST, 0, 0, 0, 0, "LOAD_INPUT: bad index or length");
        return;
    }
    if (f->length > 5) { /* <= 255 more (proto_max_request) */
        stage_len = f->length - 5u;
        memcpy(stage_path, f->payload + 5, stage_len);
        stage_path[stage_len] = 0;
    }
    if (stage_len == 0) {
        proto_error(f->seq, ERR_OUT_OF_RANGE, 0, 0, 0, 0, "LOAD_INPUT: no file named yet");
        return;
    }
    const model_tensor_t *t = &model_inputs[f->payload[0]];
    const int32_t fd = board_file_open(stage_path, stage_len, 1u);
    const int32_t got = fd < 0 ? -1 : board_file_read(fd, get32(f->payload + 1), input_base(f->payload[0]), t->bytes);
    if (fd >= 0) {
        board_file_close(fd);
    }
    if (got != (int32_t)t->bytes) {
        proto_error(f->seq, ERR_OUT_OF_RANGE, (uint32_t)got, t->bytes, 0, 0, "LOAD_INPUT: file missing or short");
        return;
    }
    tx[0] = MSG_LOAD_INPUT;
    proto_send(MSG_ACK, f->seq, tx, 1);
}

/* Bit s: a PUT_INPUT with sequence number s was stored since the last other request. Any other request
 * clears them all once it is served, so a bit never outlives the round of PUTs it belongs to. */
static uint8_t landed[32];
static uint8_t checked[2 + 16]; /* the last CHECKED payload, for a CHECK repeated because its answer was lost */
static uint16_t checked_len;

/* CHECK (first seq u8, count u8, 1..128) -> CHECKED (first, count, count bits: bit k set when the PUT
 * with seq first + k landed). A repeat gets the kept answer: the bits were cleared by the first. */
static void check_landed(const frame_t *f, int repeated)
{
    if (repeated && checked_len > 0) {
        proto_send(MSG_CHECKED, f->seq, checked, checked_len);
        return;
    }
    const uint32_t first = f->length >= 2 ? f->payload[0] : 0, count = f->length >= 2 ? f->payload[1] : 0;
    if (count == 0 || count > 128) {
        checked_len = 0; /* a repeat of this request is refused again, not given an older answer */
        proto_error(f->seq, ERR_BAD_REQUEST, count, 128, 0, 0, "CHECK: count out of range");
        return;
    }
    memset(checked, 0, sizeof checked);
    checked[0] = (uint8_t)first;
    checked[1] = (uint8_t)count;
    for (uint32_t k = 0; k < count; k++) {
        const uint32_t s = (first + k) & 0xFFu;
        if (landed[s >> 3] & (1u << (s & 7u))) {
            checked[2 + (k >> 3)] |= (uint8_t)(1u << (k & 7u));
        }
    }
    checked_len = (uint16_t)(2u + (count + 7u) / 8u);
    proto_send(MSG_CHECKED, f->seq, checked, checked_len);
}

static void send_stats(uint8_t seq)
{
    proto_send(MSG_STATS, seq, tx, (uint16_t)build_stats());
}

/* One inference of the inputs in inputs_copy, its count in *count. Only main() calls it, for INFER and
 * RUN_STAGED alike, so the painted peak stack is the same whichever request ran the model. */
static uint32_t run_peak; /* the deepest stack of the inferences of the last request */

__attribute__((noinline)) static void run_once(uint64_t *count, int first)
{
    /* The stack is painted below here at a request's first inference, and scanned once after its last
     * (run_done): the deepest of them all, as before, without painting and scanning every free byte of
     * SRAM an inference (on QEMU ~2 ms each, ten times a small model's inference). Between them only
     * main()'s staging calls run, at this frame's depth, far above a model's deepest frame. */
    if (first) {
        paint_stack();
    }
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
    *count = board_counter_read() - t0;
}

/* After a request's inferences: their deepest stack. */
static void run_done(void)
{
    run_peak = peak_stack();
}

/* INFER: the repetitions main() is to run (0: answered already, from the kept figures or with an error). */
__attribute__((noinline)) static uint32_t infer_begin(const frame_t *f, int repeated)
{
    uint32_t reps = f->length >= 4 ? get32(f->payload) : 0;
    if (reps == 0 || reps > MAX_REPS) {
        proto_error(f->seq, ERR_BAD_REQUEST, reps, MAX_REPS, 0, 0, "INFER: repetitions out of range");
        return 0;
    }
    if (repeated && stats_kept && reps == last_reps) {
        send_stats(f->seq);
        return 0;
    }
    /* Received: the host now waits for the figures as long as the inference takes, not less. */
    tx[0] = MSG_INFER;
    proto_send(MSG_ACK, f->seq, tx, 1);
    return reps;
}

__attribute__((noinline)) static void infer_end(const frame_t *f, uint32_t reps)
{
    last_reps = reps;
    last_stack = run_peak;
    last_hw = arena_high_water();
    stats_kept = 1;
    stats_seq = f->seq;
    send_stats(f->seq);
}

/* RUN_STAGED (first u32, count u16, in length u8, in path, out path): on QEMU, `count` samples from
 * `first` of a host file of samples (each every input, back to back) each run once; each one's outputs
 * (back to back) and count u64 are appended to the out file, which it truncates first. Answered ACK at
 * once, RAN (samples u32, peak stack u32, arena high water u32) at the end; a repeat gets that RAN again,
 * without running the batch. The host's staging is the harness's memory: the inputs go through
 * inputs_copy as any others. */
static char staged_out[256] __attribute__((section(".harness")));
static int32_t staged_in_fd = -1, staged_out_fd = -1;
static uint32_t staged_first;
/* The last RAN, for a RUN_STAGED repeated because its answer was lost or late: answered at once, the batch
 * not run again (a re-run would rewrite the out file the host may be reading, and cost the whole batch). */
static uint8_t ran_kept[12];
static int ran_is_kept;

__attribute__((noinline)) static uint32_t staged_begin(const frame_t *f)
{
    const uint32_t in_len = f->length >= 7 ? f->payload[6] : 0;
    if (!BOARD_QEMU || f->length < 8 + in_len || in_len == 0 || f->length - 7u - in_len > 255u) {
        proto_error(f->seq, ERR_BAD_REQUEST, f->length, in_len, 0, 0, "RUN_STAGED: bad request (QEMU only)");
        return 0;
    }
    const uint32_t count = (uint32_t)f->payload[4] | ((uint32_t)f->payload[5] << 8);
    staged_first = get32(f->payload);
    stage_len = in_len;
    memcpy(stage_path, f->payload + 7, in_len);
    stage_path[in_len] = 0;
    const uint32_t out_len = f->length - 7u - in_len;
    memcpy(staged_out, f->payload + 7 + in_len, out_len);
    staged_out[out_len] = 0;
    /* Received: acknowledged before the files open, which costs the host's file system time, so that the
     * host's short wait for an acknowledgement does not send the request again while it is being run. */
    tx[0] = MSG_RUN_STAGED;
    proto_send(MSG_ACK, f->seq, tx, 1);
    staged_in_fd = board_file_open(stage_path, in_len, 1u);
    staged_out_fd = staged_in_fd < 0 ? -1 : board_file_open(staged_out, out_len, 5u);
    if (staged_out_fd < 0) {
        if (staged_in_fd >= 0) {
            board_file_close(staged_in_fd);
        }
        proto_error(f->seq, ERR_OUT_OF_RANGE, 0, 0, 0, 0, "RUN_STAGED: cannot open the staging files");
        return 0;
    }
    return count;
}

/* Sample k's inputs into inputs_copy; 0 when the file is short. */
__attribute__((noinline)) static int staged_load(uint32_t k)
{
    const uint32_t at = (staged_first + k) * (uint32_t)HARNESS_INPUT_BYTES;
    return board_file_read(staged_in_fd, at, inputs_copy, HARNESS_INPUT_BYTES) == (int32_t)HARNESS_INPUT_BYTES;
}

__attribute__((noinline)) static int staged_store(const uint64_t *count)
{
    for (uint32_t i = 0; i < MODEL_NUM_OUTPUTS; i++) {
        const model_tensor_t *t = &model_outputs[i];
        if (board_file_write(staged_out_fd, arena + t->offset, t->bytes) != (int32_t)t->bytes) {
            return 0;
        }
    }
    return board_file_write(staged_out_fd, count, 8u) == 8;
}

__attribute__((noinline)) static void staged_end(const frame_t *f, uint32_t done, uint32_t count)
{
    board_file_close(staged_in_fd);
    board_file_close(staged_out_fd);
    staged_in_fd = staged_out_fd = -1;
    if (done < count) {
        proto_error(f->seq, ERR_OUT_OF_RANGE, done, count, 0, 0, "RUN_STAGED: a staging file is short");
        return;
    }
    put32(ran_kept, done);
    put32(ran_kept + 4, run_peak);
    put32(ran_kept + 8, arena_high_water());
    ran_is_kept = 1;
    proto_send(MSG_RAN, f->seq, ran_kept, 12);
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

/* GET_LAYERS (first u16, most u16) -> LAYERS (first u16, total u16, n x u64 counts at each layer's end),
 * n at most `most` (0 or left out: as many as fit). A build without profiling answers total 0. */
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
    uint32_t most = f->length >= 4 ? (uint32_t)f->payload[2] | ((uint32_t)f->payload[3] << 8) : 0;
    if (most == 0 || most > (PROTO_MAX_PAYLOAD - 4u) / 8u) {
        most = (PROTO_MAX_PAYLOAD - 4u) / 8u; /* as many as fit a frame */
    }
    n = n < most ? n : most;
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
        case MSG_HELLO_PART: send_part(&rx); break;
        case MSG_SET_INPUT: stats_kept = 0; set_input(&rx, 0); break;
        case MSG_PUT_INPUT:
            stats_kept = 0;
            if (set_input(&rx, 1)) {
                landed[rx.seq >> 3] |= (uint8_t)(1u << (rx.seq & 7u));
            }
            break;
        case MSG_CHECK: check_landed(&rx, repeated); break;
        case MSG_LOAD_INPUT: stats_kept = 0; load_input(&rx); break;
        case MSG_INFER: {
            const uint32_t reps = infer_begin(&rx, repeated);
            for (uint32_t r = 0; r < reps; r++) {
                run_once(&counts[r], r == 0);
            }
            if (reps > 0) {
                run_done();
                infer_end(&rx, reps);
            }
            break;
        }
        case MSG_RUN_STAGED: {
            if (repeated && ran_is_kept) {
                proto_send(MSG_RAN, rx.seq, ran_kept, 12);
                break;
            }
            ran_is_kept = 0;
            stats_kept = 0; /* the figures a repeated INFER would get are no longer the last run's */
            const uint32_t n = staged_begin(&rx);
            uint32_t done = 0;
            while (done < n && staged_load(done)) {
                run_once(&counts[0], done == 0);
                if (!staged_store(&counts[0])) {
                    break;
                }
                done++;
            }
            if (done > 0) {
                run_done();
            } else {
                run_peak = 0;
            }
            if (staged_in_fd >= 0) {
                staged_end(&rx, done, n);
            }
            break;
        }
        case MSG_GET_OUTPUT: get_output(&rx); break;
        case MSG_GET_LAYERS: get_layers(&rx); break;
        default: proto_error(rx.seq, ERR_BAD_REQUEST, rx.type, 0, 0, 0, "unknown request"); break;
        }
        if (rx.type != MSG_PUT_INPUT) {
            memset(landed, 0, sizeof landed);
        }
    }
}
