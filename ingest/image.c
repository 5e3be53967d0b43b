/* image.c — one-off still images (the daemon's `image` request): decode, image smart_resize,
 * the frame twice as one pair. Runs a short-lived source so that the same policy, interrupt
 * and conversion code applies as for streams. */
#include "ingest/ingest_internal.h"

#include <stdio.h>

static int run_once(ingest_source *src, ingest_pair **out, char *err, size_t errlen)
{
    int rc = ingest_source_start(src, err, errlen);
    if (rc) {
        ingest_source_destroy(src);
        return rc;
    }
    ingest_pair *p = NULL;
    /* the source ends by itself: after the first frame, or FAILED on any error/timeout */
    while ((rc = ingest_source_pop(src, &p, 1000)) == INGEST_EAGAIN) {
    }
    if (rc == 0) {
        *out = p;
    } else {
        char msg[512];
        ingest_source_last_error(src, msg, sizeof(msg));
        ingest_set_err(err, errlen, "image: %s", msg[0] ? msg : "no picture could be decoded");
        rc = INGEST_EIO;
    }
    ingest_source_destroy(src);
    return rc;
}

int ingest_image_load(const char *url, const ingest_options *opt, ingest_pair **out,
                      char *err, size_t errlen)
{
    *out = NULL;
    ingest_options defaults;
    if (!opt) {
        ingest_options_init(&defaults);
        opt = &defaults;
    }
    ingest_source *src;
    int rc = ingest_source_create_image(&src, url, NULL, 0, opt, err, errlen);
    if (rc)
        return rc;
    return run_once(src, out, err, errlen);
}

int ingest_image_decode(const void *data, size_t len, const ingest_options *opt,
                        ingest_pair **out, char *err, size_t errlen)
{
    *out = NULL;
    ingest_options defaults;
    if (!opt) {
        ingest_options_init(&defaults);
        opt = &defaults;
    }
    ingest_source *src;
    int rc = ingest_source_create_image(&src, NULL, data, len, opt, err, errlen);
    if (rc)
        return rc;
    return run_once(src, out, err, errlen);
}
