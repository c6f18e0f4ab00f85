//! A small, seedable random generator (xoshiro256++ seeded by SplitMix64). Kiln owns it so
//! that a seed gives the same numbers in every version and on every machine.

use std::sync::Mutex;

/// A deterministic random number generator.
#[derive(Debug, Clone)]
pub struct Generator {
    s: [u64; 4],
}

impl Generator {
    pub const fn new(seed: u64) -> Generator {
        // SplitMix64 spreads any seed (even 0) over the four words of state.
        let mut x = seed;
        let mut s = [0u64; 4];
        let mut i = 0;
        while i < 4 {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            s[i] = z ^ (z >> 31);
            i += 1;
        }
        Generator { s }
    }

    /// The full state (for checkpoints): `Generator::from_state(g.state())` continues the
    /// same sequence.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }
    pub fn from_state(s: [u64; 4]) -> Generator {
        Generator { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

static GLOBAL: Mutex<Generator> = Mutex::new(Generator::new(0x4B49_4C4E));

/// Seeds the default generator behind `rand`, `randn`, dropout and initialisation (this
/// thread's scoped one inside [`scoped`], else the process-wide one).
pub fn manual_seed(seed: u64) {
    with_global(|g| *g = Generator::new(seed));
}

thread_local! {
    static SCOPED: std::cell::RefCell<Option<Generator>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the default generator: this thread's scoped one (see [`scoped`]) if any,
/// else the process-wide one.
pub fn with_global<R>(f: impl FnOnce(&mut Generator) -> R) -> R {
    let mut f = Some(f);
    let scoped = SCOPED.with(|s| s.borrow_mut().as_mut().map(|g| (f.take().expect("called once"))(g)));
    match scoped {
        Some(r) => r,
        None => (f.take().expect("called once"))(&mut GLOBAL.lock().unwrap_or_else(|p| p.into_inner())),
    }
}

/// Runs `f` with a default generator of its own on this thread, seeded by `seed`: what
/// `rand`, `randn`, dropout and initialisation draw inside `f` does not depend on other
/// threads (a training run, a data-parallel worker, a test). Nested calls stack.
pub fn scoped<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Generator>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            SCOPED.with(|s| *s.borrow_mut() = prev);
        }
    }
    let prev = SCOPED.with(|s| s.borrow_mut().replace(Generator::new(seed)));
    let _restore = Restore(prev);
    f()
}

/// The global generator's state (saved in checkpoints so a resumed run draws the same
/// dropout masks).
pub fn global_state() -> [u64; 4] {
    with_global(|g| g.state())
}

/// Restores the global generator's state.
pub fn set_global_state(s: [u64; 4]) {
    with_global(|g| *g = Generator::from_state(s))
}
