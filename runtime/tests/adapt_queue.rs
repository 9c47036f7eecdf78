//! The upload queue: bounded drop-oldest, spool recovery across restarts,
//! corrupt spool files.

use shiftnn_runtime::adapt::UploadQueue;
use std::sync::Arc;

fn p(i: u32) -> Vec<u8> {
    i.to_le_bytes().repeat(3)
}

#[test]
fn full_queue_drops_oldest_and_counts() {
    let q = UploadQueue::new(3);
    for i in 0..5 {
        assert_eq!(q.push(p(i)), i as u64);
    }
    let st = q.stats();
    assert_eq!((st.pushed, st.dropped, st.len), (5, 2, 3));
    let seqs: Vec<u64> = q.peek(10).iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(q.front().unwrap().payload, p(2));
    assert!(q.ack(3));
    assert!(!q.ack(3));
    assert!(!q.ack(0), "dropped samples cannot be acked");
    assert_eq!(q.pop().unwrap().seq, 2);
    assert_eq!(q.pop().unwrap().seq, 4);
    assert!(q.pop().is_none() && q.is_empty());
    assert_eq!(q.stats().acked, 3);
}

#[test]
fn push_never_waits_for_the_consumer() {
    // Producers on two threads push far more than the capacity while
    // nobody consumes: every push returns, drops are counted exactly.
    let q = Arc::new(UploadQueue::new(16));
    let ts: Vec<_> = (0..2)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    q.push(p(t * 1000 + i));
                }
            })
        })
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    let st = q.stats();
    assert_eq!((st.pushed, st.len, st.dropped), (2000, 16, 1984));
}

#[test]
fn restart_recovers_everything_queued() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = UploadQueue::with_spool(10, dir.path(), true).unwrap();
        for i in 0..6 {
            q.push(p(i));
        }
        assert!(q.ack(1));
        assert_eq!(q.pop().unwrap().seq, 0);
        // Dropped without any shutdown step: a crash.
    }
    let q = UploadQueue::with_spool(10, dir.path(), false).unwrap();
    let got: Vec<(u64, Vec<u8>)> = q
        .peek(100)
        .into_iter()
        .map(|s| (s.seq, s.payload))
        .collect();
    assert_eq!(got, vec![(2, p(2)), (3, p(3)), (4, p(4)), (5, p(5))]);
    let st = q.stats();
    assert_eq!((st.recovered, st.corrupt, st.len), (4, 0, 4));
    // Sequence numbers continue after the recovered ones.
    assert_eq!(q.push(p(9)), 6);
    // Acked samples stay gone on the next restart.
    assert!(q.ack(2));
    drop(q);
    let q = UploadQueue::with_spool(10, dir.path(), false).unwrap();
    let seqs: Vec<u64> = q.peek(100).iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [3, 4, 5, 6]);
}

#[test]
fn overflow_with_spool_removes_dropped_files_and_recovery_respects_capacity() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = UploadQueue::with_spool(3, dir.path(), false).unwrap();
        for i in 0..5 {
            q.push(p(i));
        }
        assert_eq!(q.stats().dropped, 2);
    }
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 3);
    // A smaller capacity at restart keeps the newest and counts the rest.
    let q = UploadQueue::with_spool(2, dir.path(), false).unwrap();
    let seqs: Vec<u64> = q.peek(10).iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [3, 4]);
    assert_eq!(q.stats().dropped, 1);
}

#[test]
fn corrupt_spool_files_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = UploadQueue::with_spool(10, dir.path(), false).unwrap();
        for i in 0..4 {
            q.push(p(i));
        }
    }
    let f = |seq: u64| dir.path().join(format!("{seq:020}.sample"));
    // Flip a payload byte, truncate one, rename one to a wrong sequence.
    let mut b = std::fs::read(f(1)).unwrap();
    b[17] ^= 0xff;
    std::fs::write(f(1), b).unwrap();
    let b = std::fs::read(f(2)).unwrap();
    std::fs::write(f(2), &b[..b.len() / 2]).unwrap();
    std::fs::rename(f(3), f(7)).unwrap();
    // Leftovers of an interrupted write and unrelated files.
    std::fs::write(dir.path().join(".00000000000000000009.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("README"), b"not a sample").unwrap();
    std::fs::write(dir.path().join("x.sample"), b"").unwrap();
    let q = UploadQueue::with_spool(10, dir.path(), false).unwrap();
    let seqs: Vec<u64> = q.peek(10).iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [0]);
    let st = q.stats();
    assert_eq!((st.recovered, st.corrupt), (1, 4));
    assert!(!dir.path().join(".00000000000000000009.tmp").exists());
    // Corrupt files are set aside, so a second restart does not count them.
    drop(q);
    let q = UploadQueue::with_spool(10, dir.path(), false).unwrap();
    assert_eq!((q.stats().recovered, q.stats().corrupt), (1, 0));
}
