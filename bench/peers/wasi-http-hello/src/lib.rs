//! A wasi:http `incoming-handler` answering every request with
//! `Hello, World!\n`, the body of the HTTP plugin's `GET /`: the peer that
//! `wasmtime serve` runs in `bench protocols`.
//!
//! Status 200, `content-type: text/plain` and the body; `wasmtime serve`
//! adds the framing (`content-length` or chunked) and keep-alive itself.

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

const BODY: &[u8] = b"Hello, World!\n";

struct Hello;

wasi::http::proxy::export!(Hello);

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::from_list(&[
            ("content-type".to_owned(), b"text/plain".to_vec()),
            ("content-length".to_owned(), BODY.len().to_string().into_bytes()),
        ]);
        // The header names and values above are valid, so this cannot fail;
        // a handler that returns without setting the response gets a 500
        // from wasmtime serve, which the benchmark would count.
        let Ok(headers) = headers else { return };
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(out) = body.write() {
            let _ = out.blocking_write_and_flush(BODY);
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
