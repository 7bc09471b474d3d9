//! The lucky draw's cost: time per share for lucky splits of 10, 100 and 1 000 shares,
//! re-deriving a whole packet from its seed (as an audit does) and drawing share by share (as
//! grabs do).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hongbao::split;

const CAP_FEN: u64 = 20_000;

fn lucky(c: &mut Criterion) {
    let mut group = c.benchmark_group("split/lucky");
    for shares in [10u32, 100, 1_000] {
        // A total of 1 yuan per share on average, as a typical group packet.
        let total = u64::from(shares) * 100;
        group.throughput(Throughput::Elements(u64::from(shares)));
        group.bench_with_input(BenchmarkId::new("whole_packet", shares), &shares, |b, &shares| {
            let mut seed = 0u64;
            b.iter(|| {
                seed += 1;
                split::lucky_shares(black_box(total), shares, CAP_FEN, seed)
            })
        });
        group.bench_with_input(BenchmarkId::new("draw_by_draw", shares), &shares, |b, &shares| {
            let mut rng = split::rng(7);
            b.iter(|| {
                let mut remaining = black_box(total);
                for left in (1..=shares).rev() {
                    remaining -= split::draw(&mut rng, remaining, left, CAP_FEN);
                }
                remaining
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(2));
    targets = lucky
}
criterion_main!(benches);
