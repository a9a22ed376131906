//! The `#[nimify(model = "...")]` attribute macro. Re-exported by the `nimify` crate; the typed
//! expansion lands with the macro issue, this crate reserves the name and the facade pin.
