use super::*;

fn keys(seeds: &[u8]) -> SessionKeys {
    let set = SessionKeys::local(Duration::from_secs(3600));
    let keys: Vec<Vec<u8>> = seeds.iter().map(|seed| vec![*seed; KEY_LEN]).collect();
    assert_eq!(set.set(&keys), seeds.len());
    set
}

fn rest() -> Rest {
    let handshake = serde_json::from_value(serde_json::json!({
        "protocolVersion": "2025-11-25",
        "capabilities": { "sampling": {} },
        "clientInfo": { "name": "sealed", "version": "1" },
    }))
    .expect("a handshake");
    Rest {
        owner: Some("team-a".into()),
        handshake: Some(handshake),
    }
}

#[test]
fn a_sealed_id_opens_to_what_was_sealed_on_any_replica_with_the_key() {
    let id = Uuid::new_v4();
    let token = keys(&[1]).seal(id, &rest()).expect("sealed");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let other_replica = keys(&[1]);
    let claims = other_replica.open(&token, true).expect("opens");
    assert_eq!(claims.id, id);
    assert_eq!(claims.rest, Some(rest()));
    let quick = other_replica.open(&token, false).expect("opens");
    assert_eq!((quick.id, quick.rest), (id, None));
    assert_eq!(
        other_replica.open(&"A".repeat(MAX_ID + 1), false),
        Err(Refused::Malformed)
    );
    // Two sessions, two ids, even of the same client.
    assert_ne!(token, keys(&[1]).seal(id, &rest()).expect("sealed"));
}

#[test]
fn forged_tampered_foreign_and_expired_ids_open_nothing() {
    let set = keys(&[1]);
    let token = set.seal(Uuid::new_v4(), &rest()).expect("sealed");
    assert_eq!(keys(&[2]).open(&token, false), Err(Refused::UnknownKey));
    let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
    for at in [HEADER_LEN + NONCE_LEN, bytes.len() - 1, HEADER_LEN] {
        let mut altered = bytes.clone();
        altered[at] ^= 1;
        let refused = set.open(&URL_SAFE_NO_PAD.encode(&altered), false);
        assert!(
            matches!(refused, Err(Refused::Tampered | Refused::UnknownKey)),
            "{at}: {refused:?}"
        );
    }
    bytes.truncate(20);
    assert_eq!(
        set.open(&URL_SAFE_NO_PAD.encode(&bytes), false),
        Err(Refused::Malformed)
    );
    for forged in ["", "not a token", "4f8c2b1e-9d3a-4c6b-8e2f-1a2b3c4d5e6f"] {
        assert_eq!(set.open(forged, false), Err(Refused::Malformed), "{forged}");
    }
    let old = set
        .seal_at(Uuid::new_v4(), &rest(), unix_now() - 3601)
        .expect("sealed");
    assert_eq!(set.open(&old, false), Err(Refused::Expired));
}

#[test]
fn a_rotation_seals_with_the_new_key_and_still_opens_with_the_old() {
    let set = keys(&[1]);
    let before = set.seal(Uuid::new_v4(), &rest()).expect("sealed");
    assert_eq!(set.set(&[vec![2; KEY_LEN], vec![1; KEY_LEN]]), 2);
    let after = set.seal(Uuid::new_v4(), &rest()).expect("sealed");
    set.open(&before, false).expect("the old key still opens");
    set.open(&after, false).expect("the new key opens");
    // Once the old key leaves the set, its sessions end.
    set.set(&[vec![2; KEY_LEN]]);
    assert_eq!(set.open(&before, false), Err(Refused::UnknownKey));
    set.open(&after, false).expect("the new key opens");
    // Keys of the wrong length are no keys; an empty set changes nothing.
    assert_eq!(set.set(&[vec![3; 16]]), 0);
    set.open(&after, false).expect("unchanged");
}

#[test]
fn a_handshake_too_big_to_carry_is_left_out() {
    let set = keys(&[1]);
    let mut big = rest();
    if let Some(handshake) = big.handshake.as_mut() {
        handshake.client_info.name = "x".repeat(MAX_HANDSHAKE);
    }
    let token = set.seal(Uuid::new_v4(), &big).expect("sealed");
    let claims = set.open(&token, true).expect("opens");
    let rest = claims.rest.expect("rest");
    assert_eq!(rest.owner.as_deref(), Some("team-a"));
    assert_eq!(rest.handshake, None);
}
