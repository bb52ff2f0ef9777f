//! synx on emulated wide-area paths (issue 16): delay, a bottleneck, loss, reordering. The path
//! emulator is the test bed's (`testbed::path`); it is first calibrated kernel against kernel.

use std::time::Duration;

use testbed::{
    KernelServer,
    path::{Dir, Loss, PathBed, PathSpec, probe},
    require_root,
};

const ECHO: u16 = 7;
const DISCARD: u16 = 9;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn explore() {
    require_root();
    let spec = PathSpec::wan(ms(40), 100_000_000);
    let bed = PathBed::builder().both(spec).kernel_server().start().unwrap();
    bed.enable_gro().unwrap();
    let s = &bed.servers[0];
    let _k = KernelServer::start(&s.ns, &[(s.addr(ECHO), "echo"), (s.addr(DISCARD), "discard")]).unwrap();
    let rtts = probe::rtts(&bed.client, s.addr(ECHO), 100).unwrap();
    println!("rtt p50 {:?} p99 {:?} max {:?}", probe::quantile(&rtts, 0.5), probe::quantile(&rtts, 0.99), probe::quantile(&rtts, 1.0));
    let up0 = bed.stats(Dir::Up);
    let t = probe::upload(&bed.client, s.addr(DISCARD), 32 << 20, None).unwrap();
    let up = bed.stats(Dir::Up).since(&up0);
    println!("upload 32 MiB: {:?} = {:.1} Mbit/s", t, (32 << 20) as f64 * 8.0 / t.as_secs_f64() / 1e6);
    println!("{up:?}");
    println!("lateness p50 {:?} p99 {:?} max {:?} read p99 {:?}", up.lateness_quantile(0.5), up.lateness_quantile(0.99), up.lateness_max, up.read_delay_quantile(0.99));
    println!("down {:?}", bed.stats(Dir::Down));
    println!("device drops {}", bed.device_drops().unwrap());
    bed.set_both(PathSpec::default());
    let t = probe::upload(&bed.client, s.addr(DISCARD), 256 << 20, None).unwrap();
    println!("unlimited upload 256 MiB: {:?} = {:.1} Mbit/s", t, (256u64 << 20) as f64 * 8.0 / t.as_secs_f64() / 1e6);
    let _ = Loss::None;
}
