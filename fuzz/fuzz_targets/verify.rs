//! The verifier on a real chain that the fuzzer damages: byte flips, truncations,
//! swaps, removals and foreign bundles. It must never panic, must pass the intact
//! chain, and may pass a damaged one only if what is left is the chain's beginning.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use msp_agent::events::{Event, IncidentState, IncidentTransition};
use msp_agent::prove::bundle::{AgentRecord, BundleBody, KeyChange, NewBundle, hash_hex};
use msp_agent::prove::keys::{SigningKey, TrustedKeys, allowed_signers_line};
use msp_agent::prove::verify::{Item, Options, verify_items};

struct Fixture {
    items: Vec<Item>,
    trusted: TrustedKeys,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = SigningKey::from_seed([1; 32]);
        let at = chrono::DateTime::from_timestamp(1_770_000_000, 0).unwrap();
        let mut prev: Option<String> = None;
        let mut items = Vec::new();
        for seq in 1..=4u64 {
            let body = if seq == 1 {
                BundleBody::Agent(AgentRecord::KeyChange(KeyChange {
                    previous_key_id: None,
                    key_id: key.key_id().into(),
                    public_key: key.public_key_openssh(),
                    source: "fuzz".into(),
                }))
            } else {
                BundleBody::Event(Event::IncidentTransition(IncidentTransition {
                    incident_id: format!("inc-{seq}"),
                    check: "unit_failed".into(),
                    target: "a.service".into(),
                    severity: "critical".into(),
                    from: None,
                    to: IncidentState::Firing,
                    at,
                    reason: "r".into(),
                    observation: serde_json::json!({"n": seq, "s": "é"}),
                }))
            };
            let json = NewBundle {
                host: "h",
                agent_version: "f",
                seq,
                prev_hash: prev.as_deref(),
                recorded_at: at,
                key_id: key.key_id(),
                body: &body,
            }
            .to_bytes()
            .unwrap();
            prev = Some(hash_hex(&json));
            let sig = key.sign(&json).unwrap();
            let mut item = Item::new(format!("h/{seq}"), json, Some(sig));
            item.name_seq = Some(seq);
            items.push(item);
        }
        let trusted = TrustedKeys::parse(&allowed_signers_line("h", key.public_key())).unwrap();
        Fixture { items, trusted }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut items = f.items.clone();
    let mut changed = false;
    for op in data.chunks(4) {
        let [kind, a, b, c] = [
            op[0],
            *op.get(1).unwrap_or(&0),
            *op.get(2).unwrap_or(&0),
            *op.get(3).unwrap_or(&0),
        ];
        if items.is_empty() {
            break;
        }
        let i = a as usize % items.len();
        match kind % 6 {
            0 => {
                // flip one bit of a bundle
                let pos = (usize::from(b) << 8 | usize::from(c)) % items[i].json.len().max(1);
                if let Some(x) = items[i].json.get_mut(pos) {
                    *x ^= 1 << (c % 8);
                    changed = true;
                }
            }
            1 => {
                // truncate a bundle or its signature
                let n = items[i].json.len();
                items[i].json.truncate(usize::from(b) % n.max(1));
                changed = true;
            }
            2 => {
                // swap two bundles
                let j = b as usize % items.len();
                if i != j {
                    let (x, y) = (items[i].clone(), items[j].clone());
                    items[i].json = y.json;
                    items[i].sig = y.sig;
                    items[j].json = x.json;
                    items[j].sig = x.sig;
                    changed = true;
                }
            }
            3 => {
                items.remove(i);
                changed = true;
            }
            4 => {
                // a foreign bundle: the rest of the input, as bytes and signature
                let rest = &data[data.len().min(4)..];
                let cut = rest.iter().position(|&x| x == 0).unwrap_or(rest.len());
                items.push(Item::new(
                    "foreign",
                    rest[..cut].to_vec(),
                    Some(rest[cut.min(rest.len())..].to_vec()),
                ));
                changed = true;
                break;
            }
            _ => {
                if let Some(s) = items[i].sig.as_mut() {
                    let pos = usize::from(b) % s.len().max(1);
                    if let Some(x) = s.get_mut(pos) {
                        *x ^= 1 << (c % 8);
                        changed = true;
                    }
                }
            }
        }
    }
    let report = verify_items(&items, &f.trusted, &Options::default());
    if !changed {
        assert!(
            report.ok(),
            "the intact chain must pass: {:?}",
            report.first_failure()
        );
    } else if report.ok() {
        // A chain can only pass if it is still the original chain, or its beginning
        // (a chain alone cannot show that bundles after its newest one are gone; the
        // bucket's versions and the host's last sequence do, see docs/evidence.md).
        let mut got: Vec<&[u8]> = items.iter().map(|i| i.json.as_slice()).collect();
        got.sort();
        got.dedup();
        let mut want: Vec<&[u8]> = f.items[..got.len().min(f.items.len())]
            .iter()
            .map(|i| i.json.as_slice())
            .collect();
        want.sort();
        assert_eq!(got, want, "a damaged chain passed");
    }
});
