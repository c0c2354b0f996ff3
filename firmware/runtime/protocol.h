/* Framed messages over the UART (the layout is documented in harness/protocol.py):
 *   0xA5 0x5A | type u8 | seq u8 | length u16 LE | CRC-16 LE of those 4 | payload | CRC-32 LE over type..payload
 * The header's own check lets a receiver refuse a damaged length at once, before it waits for (and
 * swallows) that many bytes of the frames behind it. */
#ifndef PROTOCOL_H
#define PROTOCOL_H

#include <stdint.h>

#define PROTO_VERSION 2u
#define PROTO_MAX_PAYLOAD 1100u

enum {
    MSG_HELLO_REQ = 0x01,
    MSG_SET_INPUT = 0x02,
    MSG_INFER = 0x03,
    MSG_GET_OUTPUT = 0x04,
    MSG_GET_LAYERS = 0x05,
    MSG_HELLO_PART = 0x06, /* slices of HELLO or of the kept STATS, back to back (main.c: send_part) */
    MSG_PUT_INPUT = 0x07,  /* SET_INPUT's payload, no answer: chunks sent back to back, then one CHECK */
    MSG_LOAD_INPUT = 0x09, /* (index u8, file offset u32, path) -> ACK: read from a host file (QEMU) */
    MSG_RUN_STAGED = 0x0A, /* (first u32, count u16, in len u8, in path, out path) -> ACK, RAN (QEMU) */
    MSG_CHECK = 0x08,      /* (first seq u8, count u8) -> CHECKED: which of those PUTs landed, a bit each */
    MSG_HELLO = 0x81,
    MSG_ACK = 0x82,
    MSG_STATS = 0x83,
    MSG_OUTPUT = 0x84,
    MSG_LAYERS = 0x85,
    MSG_HELLO_PART_ANS = 0x86,
    MSG_CHECKED = 0x88,
    MSG_RAN = 0x8A,
    MSG_ERROR = 0xEE,
};

enum {
    ERR_BAD_CRC = 1,
    ERR_BAD_REQUEST = 2,
    ERR_OUT_OF_RANGE = 3,
    ERR_FAULT = 4,
    ERR_TOO_LONG = 5,
    ERR_ENGINE = 6, /* the engine failed to start or to run (its message says why) */
};

typedef struct {
    uint8_t type;
    uint8_t seq;
    uint16_t length;
    uint8_t payload[PROTO_MAX_PAYLOAD];
} frame_t;

uint32_t proto_crc32(uint32_t crc, const uint8_t *p, uint32_t n);
uint16_t proto_crc16(const uint8_t *p, uint32_t n);
/* The longest payload a request of `type` has (16 for a type that is no request). */
uint32_t proto_max_request(uint8_t type);
/* Blocks for the next frame. Returns 0, or an ERR_* code (the frame's seq is still filled in). */
int proto_read(frame_t *f);
void proto_send(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length);
void proto_error(uint8_t seq, uint16_t code, uint32_t a, uint32_t b, uint32_t c, uint32_t d, const char *msg);

#endif
