/* ingest_internal.h — shared by the .c files of ingest/ only; not part of the contract. */
#ifndef VIGIL_INGEST_INTERNAL_H
#define VIGIL_INGEST_INTERNAL_H

#include "ingest/ingest.h"

#define INGEST_MAX_URL 4096

typedef enum ingest_kind {
    INGEST_KIND_FILE = 0,      /* local path or file: URL (incl. images and sequences) */
    INGEST_KIND_NETWORK = 1,   /* any other allowed protocol */
    INGEST_KIND_DEVICE = 2,    /* V4L2 capture device */
} ingest_kind;

typedef struct ingest_url_info {
    ingest_kind kind;
    char scheme[64];               /* "file", "rtsp", "http", "crypto+http", "v4l2", ... */
    char open_url[INGEST_MAX_URL]; /* what avformat_open_input gets (device path for v4l2) */
    bool is_sequence;              /* printf-style numbered image sequence */
    bool live;                     /* live by scheme (rtsp, udp, ...) or device */
    bool live_known;               /* false for http(s)/hls: decided after opening */
} ingest_url_info;

void ingest_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool ingest_list_has(const char *list, const char *name);
int ingest_url_scheme(const char *url, char *scheme, size_t len);
int ingest_check_options(const ingest_options *o, char *err, size_t errlen);
/* Applies the protocol/device policy of opt to url (no option checks, no I/O). */
int ingest_classify_url(const char *url, const ingest_options *opt, ingest_url_info *ui,
                        char *err, size_t errlen);

/* Still-image demuxers allowed for encoded bytes received from clients. */
#define INGEST_IMAGE_DEMUXERS "image2pipe,png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,tiff_pipe," \
    "gif,gif_pipe,qoi_pipe,pgm_pipe,ppm_pipe,pam_pipe,pbm_pipe,pgmyuv_pipe,j2k_pipe,jpegls_pipe," \
    "dpx_pipe,exr_pipe,pcx_pipe,sgi_pipe,sunrast_pipe,xbm_pipe,xpm_pipe,pictor_pipe,psd_pipe," \
    "svg_pipe,photocd_pipe,hdr_pipe"

/* A source that decodes one image: from url (checked like any source) or from data/len
 * (the bytes must outlive the source). Its single pair is the frame twice. */
int ingest_source_create_image(ingest_source **out, const char *url, const void *data,
                               size_t len, const ingest_options *opt, char *err, size_t errlen);

#endif
