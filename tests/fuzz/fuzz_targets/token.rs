//! Bearer tokens as every endpoint and stream receives them: arbitrary text verified against the
//! server's key. Checked: no panic; nothing but a token minted with the key verifies; a subject
//! taken from the input gives a role only when it is a valid id, and a token minted for that
//! role verifies back to it while the same token with one bit flipped does not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trackline_core::auth::{Role, TokenKeys};

static KEYS: std::sync::OnceLock<TokenKeys> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = KEYS.get_or_init(|| TokenKeys::new(b"fuzz-secret"));
    let text = String::from_utf8_lossy(data);
    if let Ok((role, _)) = keys.verify(&text) {
        // Only possible if the fuzzer forged an HMAC: a real finding.
        panic!("an unminted token verified as {role:?}: {text:?}");
    }
    // The first byte picks a role, the rest is its subject (as POST /v1/tokens takes them).
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let subject = String::from_utf8_lossy(rest);
    let name = ["courier", "watch", "ops"][usize::from(pick % 3)];
    let subject = (name != "ops" || pick & 0x80 != 0).then_some(subject.as_ref());
    let Ok(role) = Role::from_parts(name, subject) else {
        return;
    };
    assert_eq!(role.name(), name);
    let token = keys.mint(&role, 60);
    assert_eq!(keys.verify(&token).map(|(r, _)| r), Ok(role));
    let mut forged = token.into_bytes();
    let at = usize::from(pick) * 7 % forged.len();
    forged[at] ^= 0x01;
    if let Ok(forged) = String::from_utf8(forged) {
        assert!(
            keys.verify(&forged).is_err(),
            "a tampered token verified: {forged}"
        );
    }
});
