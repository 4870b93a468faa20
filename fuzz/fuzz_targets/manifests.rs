//! The manifests parser (apiserver/src/source/manifests) and the
//! conversion of what it parses (inventory → desired records): any text a
//! `--source manifests:DIR` file may hold is parsed or refused without a
//! panic, and whatever parses converts.

#![no_main]

use clustermesh_apiserver::source::Inventory;
use clustermesh_apiserver::source::manifests::parse_manifests;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objects) = parse_manifests(text) else {
        return;
    };
    let mut inv = Inventory::new();
    for o in objects {
        inv.apply(o);
    }
    let _ = inv.compute("c1");
});
