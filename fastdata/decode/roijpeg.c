/* Region-of-interest JPEG decoding with libjpeg(-turbo), for fastdata.decode.roi.
 *
 * fd_decode_region decodes rows [top, top + height) and at least the columns
 * [left, left + width) of a JPEG into RGB (columns past the right edge are dropped). libjpeg-turbo's jpeg_crop_scanline widens the
 * column range to whole iMCUs (it reports the range it chose), jpeg_skip_scanlines skips
 * the inverse DCT, upsampling and colour conversion of the rows above, and decoding stops
 * after the last row asked for. Errors never exit the process: the error manager jumps
 * back here and the message is copied into `err`.
 */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct fd_error {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    char *msg;
    int msglen;
};

static void fd_error_exit(j_common_ptr cinfo) {
    struct fd_error *e = (struct fd_error *)cinfo->err;
    char buf[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buf);
    if (e->msglen > 0) {
        strncpy(e->msg, buf, (size_t)e->msglen - 1);
        e->msg[e->msglen - 1] = '\0';
    }
    longjmp(e->jump, 1);
}

/* Warnings (corrupt or truncated data that libjpeg would patch over) are errors, as in
 * simplejpeg's strict mode: a damaged sample must not pass as a grey-filled image. */
static void fd_emit_message(j_common_ptr cinfo, int level) {
    if (level < 0) {
        fd_error_exit(cinfo);
    }
}

/* Decode a region into `out` (capacity `cap` bytes), rows of *out_w RGB pixels.
 * On success returns 0, with *out_left/*out_w the column range written (it contains
 * [left, left + width)). Returns -1 on a decoding error, -2 if `out` is too small or the
 * region lies outside the image, -3 if the image cannot be converted to RGB. */
int fd_decode_region(const unsigned char *data, unsigned long size, int top, int left,
                     int height, int width, unsigned char *out, unsigned long cap,
                     int *out_left, int *out_w, char *err, int errlen) {
    struct jpeg_decompress_struct cinfo;
    struct fd_error jerr;
    volatile int status = 0;
    cinfo.err = jpeg_std_error(&jerr.mgr);
    jerr.mgr.error_exit = fd_error_exit;
    jerr.mgr.emit_message = fd_emit_message;
    jerr.msg = err;
    jerr.msglen = errlen;
    if (setjmp(jerr.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return -3;
    }
    if (left >= 0 && (unsigned)left < cinfo.image_width &&
        (unsigned)(left + width) > cinfo.image_width) {
        width = (int)cinfo.image_width - left; /* columns past the right edge: none */
    }
    if (top < 0 || left < 0 || height < 1 || width < 1 ||
        (unsigned)(top + height) > cinfo.image_height ||
        (unsigned)(left + width) > cinfo.image_width) {
        jpeg_destroy_decompress(&cinfo);
        return -2;
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    JDIMENSION xoff = (JDIMENSION)left, cw = (JDIMENSION)width;
    if (cw < cinfo.output_width) {
        jpeg_crop_scanline(&cinfo, &xoff, &cw);
    } else {
        xoff = 0;
        cw = cinfo.output_width;
    }
    unsigned long stride = (unsigned long)cw * 3;
    if (stride * (unsigned long)height > cap) {
        status = -2;
    } else {
        if (top > 0) {
            jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
        }
        /* Whole row groups per call: one row at a time makes libjpeg upsample each
         * group into its own buffer and copy it out row by row. */
        JSAMPROW lines[32];
        for (int row = 0; row < height;) {
            int want = height - row < 32 ? height - row : 32;
            for (int i = 0; i < want; i++) {
                lines[i] = out + stride * (unsigned long)(row + i);
            }
            JDIMENSION got = jpeg_read_scanlines(&cinfo, lines, (JDIMENSION)want);
            if (got == 0) { /* cannot happen with a memory source; never spin */
                strncpy(err, "the decoder returned no row", (size_t)errlen - 1);
                status = -1;
                break;
            }
            row += (int)got;
        }
        *out_left = (int)xoff;
        *out_w = (int)cw;
    }
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return status;
}
