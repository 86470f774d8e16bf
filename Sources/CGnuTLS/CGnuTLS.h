// GnuTLS (Debian: libgnutls28-dev) for Swift: the library's own header plus one-line shims for what Swift cannot
// import (function-like macros, the gnutls_free function-pointer variable). No logic lives here.
#ifndef CGNUTLS_H
#define CGNUTLS_H

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

/// gnutls_transport_set_int (a macro over gnutls_transport_set_int2).
static inline void CGnuTLS_transport_set_int(gnutls_session_t session, int descriptor) {
    gnutls_transport_set_int2(session, descriptor, descriptor);
}

/// gnutls_free (a variable holding the library's deallocator, wrapped by a macro).
static inline void CGnuTLS_free_datum(gnutls_datum_t *datum) {
    gnutls_free(datum->data);
    datum->size = 0;
}

#endif
