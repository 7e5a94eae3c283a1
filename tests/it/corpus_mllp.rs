//! Every message of ../shared/corpus/hl7v2 sent over MLLP to a running gateway: well-formed
//! ones (they parse, have MSH-9/10/12 and a supported version) get AA; everything else gets a
//! non-accept code with an ERR segment and never AA.
//! (`ack_mode = "original"` so that NE/ER senders are answered too; the default honours MSH-15.)

#![allow(clippy::unwrap_used)]

use caregate::hl7::{Charset, Message, ack, batch, charset};

use crate::support::{self, Gateway};

/// What the gateway should do with a message, judged by the parser alone.
fn well_formed(raw: &[u8]) -> bool {
    let Ok((text, _)) = charset::decode(raw, Charset::Latin1) else {
        return false;
    };
    let Ok(msg) = Message::parse(&text) else {
        return false;
    };
    msg.header()
        .is_ok_and(|h| ack::version_supported(h.version))
}

#[tokio::test]
async fn every_well_formed_corpus_message_gets_aa_and_the_rest_never_do() {
    let Some(dir) = support::corpus_dir("hl7v2") else {
        return;
    };
    // 120 corpus messages set MSH-15 to NE or ER (enhanced mode: no accept ACK on success); the
    // per-source override answers every message in original mode so each gets its AA/AE/AR.
    let gw = Gateway::start("ack_mode = \"original\"\n", "max_messages = 100000\n").await;
    let mut client = gw.client().await;
    let (mut files, mut accepted, mut refused, mut skipped) = (0, 0, 0, 0);
    let mut wrong = Vec::new();
    for path in support::walk(&dir) {
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for (i, m) in batch::split(&bytes).messages.iter().enumerate() {
            // Files separate segments with LF or CRLF; over MLLP senders use CR.
            let payload = caregate::cli::normalise_segments(m);
            if payload.iter().any(|&b| b == 0x0b || b == 0x1c) {
                skipped += 1; // cannot be framed by MLLP at all
                continue;
            }
            let expect_aa = well_formed(&payload);
            let reply = client.send(&payload).await.unwrap();
            let Some(a) = reply.acks.first() else {
                wrong.push(format!("{}#{}: no MSA in reply", path.display(), i + 1));
                continue;
            };
            let is_aa = a.code_text == "AA";
            if is_aa {
                accepted += 1;
            } else {
                refused += 1;
            }
            if expect_aa != is_aa || (!is_aa && a.error_codes.is_empty()) {
                wrong.push(format!(
                    "{}#{}: expected {}, got {} {:?}",
                    path.display(),
                    i + 1,
                    if expect_aa { "AA" } else { "AE/AR with ERR" },
                    a.code_text,
                    a.error_codes
                ));
            }
        }
    }
    eprintln!(
        "corpus over MLLP: {files} files, {accepted} messages AA, {refused} refused with ERR, {skipped} unframeable skipped"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(accepted > 500, "too few accepted: {accepted}");
    gw.stop().await;
}
