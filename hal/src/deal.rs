//! How a fan-out deals one detector's images to N writer ranks, so that any reader computes
//! where image `i` lives: block `image_id / frames_per_block` goes to rank `block % ranks`
//! (odin-data's `frames_per_block` and `rank`/`processes`).

use core::num::NonZeroU64;

/// How images are dealt to ranks: block `image_id / frames_per_block` goes to rank
/// `block % ranks`. Deterministic, so any reader computes where image `i` lives.
///
/// ```
/// use detflow_hal::Deal;
///
/// let deal = Deal::new(3, 2).unwrap();
/// let ranks: Vec<u64> = (0..8).map(|i| deal.rank_of(i)).collect();
/// assert_eq!(ranks, [0, 0, 1, 1, 2, 2, 0, 0]);
/// assert_eq!(deal.index_in_rank(7), 3); // rank 0 holds 0, 1, 6, 7
/// assert_eq!(deal.image_id(0, 3), Some(7));
/// assert_eq!(deal.images_of_rank(0, 8), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deal {
    ranks: NonZeroU64,
    frames_per_block: NonZeroU64,
}

impl Deal {
    /// The deal over `ranks` ranks in blocks of `frames_per_block` images; `None` when
    /// either is 0.
    pub fn new(ranks: u64, frames_per_block: u64) -> Option<Self> {
        Some(Deal {
            ranks: NonZeroU64::new(ranks)?,
            frames_per_block: NonZeroU64::new(frames_per_block)?,
        })
    }

    /// Number of ranks (at least 1).
    pub fn ranks(&self) -> u64 {
        self.ranks.get()
    }

    /// Images per block (at least 1).
    pub fn frames_per_block(&self) -> u64 {
        self.frames_per_block.get()
    }

    /// The rank image `image_id` goes to, `0..ranks`.
    pub fn rank_of(&self, image_id: u64) -> u64 {
        (image_id / self.frames_per_block) % self.ranks
    }

    /// Where image `image_id` stands among its rank's images (0-based): its frame in the
    /// rank's files when no image of the series was lost.
    pub fn index_in_rank(&self, image_id: u64) -> u64 {
        let b = self.frames_per_block.get();
        (image_id / b / self.ranks) * b + image_id % b
    }

    /// The image at `index` among rank `rank`'s images: the inverse of [`Deal::rank_of`] and
    /// [`Deal::index_in_rank`]. `None` when `rank` is out of range or the id overflows u64.
    pub fn image_id(&self, rank: u64, index: u64) -> Option<u64> {
        if rank >= self.ranks.get() {
            return None;
        }
        let b = self.frames_per_block.get();
        let round = index / b;
        round
            .checked_mul(self.ranks.get())?
            .checked_add(rank)?
            .checked_mul(b)?
            .checked_add(index % b)
    }

    /// How many of a series' images `0..number_of_images` rank `rank` gets.
    pub fn images_of_rank(&self, rank: u64, number_of_images: u64) -> u64 {
        let b = self.frames_per_block.get();
        let Some(round) = self.ranks.get().checked_mul(b) else {
            // Fewer images than one round can hold: whole blocks from rank 0 on.
            let before = rank.saturating_mul(b);
            return number_of_images.saturating_sub(before).min(b);
        };
        let rest = number_of_images % round;
        (number_of_images / round) * b + rest.saturating_sub(rank.saturating_mul(b)).min(b)
    }
}
