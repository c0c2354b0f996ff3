#include "protocol.h"

#include <string.h>

#include "board.h"

uint32_t proto_crc32(uint32_t crc, const uint8_t *p, uint32_t n)
{
    /* Bitwise CRC-32 (IEEE, reflected): no table, so no 1 KiB of flash; frames are short. */
    crc = ~crc;
    for (uint32_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

uint16_t proto_crc16(const uint8_t *p, uint32_t n)
{
    /* CRC-16/CCITT (0x1021, from 0xFFFF) of a frame's header: a damaged length must not pass, or the
     * receiver swallows that many bytes of the frames behind it (8 bits let 1 in 256 through). */
    uint16_t crc = 0xFFFFu;
    for (uint32_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int k = 0; k < 8; k++) {
            const uint32_t shifted = (uint32_t)crc << 1;
            crc = (uint16_t)((crc & 0x8000u) ? shifted ^ 0x1021u : shifted);
        }
    }
    return crc;
}

uint32_t proto_max_request(uint8_t type)
{
    switch (type) {
    case MSG_HELLO_REQ: return 0;
    case MSG_HELLO_PART: return 7;
    case MSG_SET_INPUT: return PROTO_MAX_PAYLOAD;
    case MSG_INFER: return 4;
    case MSG_GET_OUTPUT: return 7;
    case MSG_GET_LAYERS: return 4;
    case MSG_PUT_INPUT: return PROTO_MAX_PAYLOAD;
    case MSG_CHECK: return 2;
    case MSG_LOAD_INPUT: return 5 + 255;
    case MSG_RUN_STAGED: return 7 + 255 + 255;
    default: return 16; /* short: read it, and its CRC tells a damaged header from an unknown request */
    }
}

int proto_read(frame_t *f)
{
    uint8_t head[4];
    for (;;) { /* resynchronise on the marker: garbage between frames is skipped */
        if (board_uart_getc() != 0xA5) {
            continue;
        }
        int c = board_uart_getc();
        while (c == 0xA5) {
            c = board_uart_getc();
        }
        if (c == 0x5A) {
            break;
        }
    }
    for (int i = 0; i < 4; i++) {
        head[i] = (uint8_t)board_uart_getc();
    }
    uint16_t head_crc = (uint16_t)board_uart_getc();
    head_crc |= (uint16_t)(board_uart_getc() << 8);
    f->type = head[0];
    f->seq = head[1];
    f->length = (uint16_t)(head[2] | (head[3] << 8));
    if (proto_crc16(head, 4) != head_crc) {
        return ERR_BAD_CRC; /* resynchronise at once: the length cannot be trusted */
    }
    if (f->length > PROTO_MAX_PAYLOAD) {
        return ERR_TOO_LONG;
    }
    /* A header a noisy link damaged: an unknown type, or a length no such request has. Waiting for
     * that many payload bytes would swallow the host's next requests, so resynchronise at once. */
    if (f->length > proto_max_request(f->type)) {
        return ERR_BAD_CRC;
    }
    /* The CRC grows byte by byte as they arrive: computed after the last one, a 1 KiB payload's would
     * take a few byte times at 115200 baud, and the next frame's first bytes would overrun the UART. */
    uint32_t crc = proto_crc32(0, head, 4);
    for (uint32_t i = 0; i < f->length; i++) {
        f->payload[i] = (uint8_t)board_uart_getc();
        crc = proto_crc32(crc, &f->payload[i], 1);
    }
    uint32_t want = 0;
    for (int i = 0; i < 4; i++) {
        want |= (uint32_t)board_uart_getc() << (8 * i);
    }
    return crc == want ? 0 : ERR_BAD_CRC;
}

void proto_send(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length)
{
    uint8_t head[8] = {0xA5, 0x5A, type, seq, (uint8_t)length, (uint8_t)(length >> 8), 0, 0};
    const uint16_t check = proto_crc16(head + 2, 4);
    head[6] = (uint8_t)check;
    head[7] = (uint8_t)(check >> 8);
    uint32_t crc = proto_crc32(0, head + 2, 4);
    crc = proto_crc32(crc, payload, length);
    uint8_t tail[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    board_uart_write(head, 8);
    board_uart_write(payload, length);
    board_uart_write(tail, 4);
}

void proto_error(uint8_t seq, uint16_t code, uint32_t a, uint32_t b, uint32_t c, uint32_t d, const char *msg)
{
    uint8_t p[18 + 96];
    uint32_t words[4] = {a, b, c, d};
    p[0] = (uint8_t)code;
    p[1] = (uint8_t)(code >> 8);
    for (int w = 0; w < 4; w++) {
        for (int i = 0; i < 4; i++) {
            p[2 + 4 * w + i] = (uint8_t)(words[w] >> (8 * i));
        }
    }
    uint32_t n = (uint32_t)strlen(msg);
    if (n > 96) {
        n = 96;
    }
    memcpy(p + 18, msg, n);
    proto_send(MSG_ERROR, seq, p, (uint16_t)(18 + n));
}
