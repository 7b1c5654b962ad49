//! libFuzzer target: arbitrary bytes, split at arbitrary points, through the
//! stream parser; see `starling_xmpp_fuzz::check_stream_parser` for what is asserted.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    starling_xmpp_fuzz::check_stream_parser(data);
});
