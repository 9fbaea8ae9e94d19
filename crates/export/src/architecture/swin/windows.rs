//! Swin's window geometry, worked out at export time so the graph only gathers and adds constants.
//!
//! transformers' `SwinLayer` pads the token grid to whole windows, rolls it by `-shift`, cuts it into
//! windows, and after attention undoes all three; `SwinPatchMerging` pads odd sides and concatenates
//! 2x2 neighbours. Each of these only moves tokens, so each is one index table here: a gather that reads
//! token `height * width` (a zero row appended to the grid) wherever transformers reads padding.

/// Where one block's windows sit on a `height x width` token grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLayout {
    /// Token rows.
    pub height: usize,
    /// Token columns.
    pub width: usize,
    /// Window side in tokens.
    pub window: usize,
    /// Cyclic shift in tokens (0 for a plain window block).
    pub shift: usize,
}

impl WindowLayout {
    /// Block `index` of a stage as transformers 5.23 runs it: odd blocks shift by `window / 2`, except that
    /// a grid no larger than the window in one side gets no shift (`set_shift_and_window_size`). That rule
    /// would also shrink the window to the grid, but the relative position bias keeps the configured
    /// window's size, so transformers fails on such a grid; so does this.
    pub fn new(height: usize, width: usize, window: usize, index: usize) -> Result<WindowLayout, String> {
        let side = height.min(width);
        if side < window {
            return Err(format!(
                "a {height}x{width} token grid is smaller than window_size {window} (transformers cannot run \
                 it either: its relative position bias keeps the window's size)"
            ));
        }
        let shift = if side <= window || index.is_multiple_of(2) { 0 } else { window / 2 };
        Ok(WindowLayout { height, width, window, shift })
    }

    /// Tokens in the grid.
    pub fn tokens(&self) -> usize {
        self.height * self.width
    }

    /// Tokens in one window.
    pub fn window_tokens(&self) -> usize {
        self.window * self.window
    }

    fn padded(&self) -> (usize, usize) {
        (self.height.next_multiple_of(self.window), self.width.next_multiple_of(self.window))
    }

    /// Windows per image.
    pub fn windows(&self) -> usize {
        let (rows, cols) = self.padded();
        (rows / self.window) * (cols / self.window)
    }

    /// Whether some window reads padding, that is the zero token.
    pub fn reads_padding(&self) -> bool {
        self.padded() != (self.height, self.width)
    }

    /// Whether partitioning moves nothing: one unpadded, unshifted window holding the grid in order.
    pub fn is_identity(&self) -> bool {
        self.shift == 0 && self.windows() == 1 && !self.reads_padding()
    }

    /// `[windows, window_tokens]`: the grid token each window slot holds after padding, the roll by
    /// `-shift` and `window_partition`; [`WindowLayout::tokens`] (the zero token) for padding.
    pub fn partition(&self) -> Vec<i64> {
        let (rows, cols) = self.padded();
        let w = self.window;
        let mut slots = Vec::with_capacity(rows * cols);
        for window_row in 0..rows / w {
            for window_col in 0..cols / w {
                for y in window_row * w..(window_row + 1) * w {
                    for x in window_col * w..(window_col + 1) * w {
                        let (row, col) = ((y + self.shift) % rows, (x + self.shift) % cols);
                        let token = if row < self.height && col < self.width {
                            row * self.width + col
                        } else {
                            self.tokens()
                        };
                        slots.push(token as i64);
                    }
                }
            }
        }
        slots
    }

    /// `[tokens]`: the slot of the flattened windows (`window * window_tokens + position`) each grid token
    /// comes back from, undoing [`WindowLayout::partition`] (`window_reverse`, the roll by `+shift`, and the
    /// crop of the padding).
    pub fn reverse(&self) -> Vec<i64> {
        let mut from = vec![0i64; self.tokens()];
        for (slot, token) in self.partition().into_iter().enumerate() {
            if let Some(entry) = from.get_mut(token as usize) {
                *entry = slot as i64;
            }
        }
        from
    }

    /// `[windows, window_tokens, window_tokens]`: transformers' `get_attn_mask`, `-100` between positions
    /// of a window that the roll brought together from different regions of the padded grid, else 0;
    /// `None` when the block does not shift.
    pub fn shift_mask(&self) -> Option<Vec<f32>> {
        if self.shift == 0 {
            return None;
        }
        let (rows, cols) = self.padded();
        let region = |i: usize, side: usize| {
            usize::from(i >= side - self.window) + usize::from(i >= side - self.shift)
        };
        let w = self.window;
        let mut mask = Vec::with_capacity(self.windows() * w.pow(4));
        for window_row in 0..rows / w {
            for window_col in 0..cols / w {
                let labels: Vec<usize> = (0..w * w)
                    .map(|p| {
                        let (y, x) = (window_row * w + p / w, window_col * w + p % w);
                        region(y, rows) * 3 + region(x, cols)
                    })
                    .collect();
                for a in &labels {
                    mask.extend(labels.iter().map(|b| if a == b { 0.0 } else { -100.0 }));
                }
            }
        }
        Some(mask)
    }

    /// `[windows or 1, heads, window_tokens, window_tokens]`: what each block adds to its attention
    /// scores, the relative position bias `table` (`[(2 * window - 1)^2, heads]`, as checkpoints store it)
    /// looked up by relative position, plus the shift mask. Summed in that order, as transformers does.
    pub fn attention_bias(&self, table: &[f32], heads: usize) -> (Vec<usize>, Vec<f32>) {
        let t = self.window_tokens();
        let index = relative_position_index(self.window);
        let mut relative = Vec::with_capacity(heads * t * t);
        for head in 0..heads {
            relative.extend(index.iter().map(|i| table[i * heads + head]));
        }
        match self.shift_mask() {
            None => (vec![1, heads, t, t], relative),
            Some(mask) => {
                let mut bias = Vec::with_capacity(self.windows() * heads * t * t);
                for window_mask in mask.chunks_exact(t * t) {
                    for head_bias in relative.chunks_exact(t * t) {
                        bias.extend(head_bias.iter().zip(window_mask).map(|(b, m)| b + m));
                    }
                }
                (vec![self.windows(), heads, t, t], bias)
            }
        }
    }
}

/// `[window^2, window^2]`: transformers' `relative_position_index`, the row of the bias table holding the
/// offset between window positions `a` and `b` (row-major in the window).
fn relative_position_index(window: usize) -> Vec<usize> {
    let t = window * window;
    let mut index = Vec::with_capacity(t * t);
    for a in 0..t {
        for b in 0..t {
            let dy = a / window + window - 1 - b / window;
            let dx = a % window + window - 1 - b % window;
            index.push(dy * (2 * window - 1) + dx);
        }
    }
    index
}

/// `[ceil(height/2) * ceil(width/2), 4]`: the four tokens `SwinPatchMerging` concatenates for each merged
/// token, in its order (rows `2i, 2i+1` of column `2j`, then of column `2j+1`), with `height * width` (the
/// zero token) where it reads the padding of an odd side.
pub fn merge_groups(height: usize, width: usize) -> Vec<i64> {
    let zero = height * width;
    let mut groups = Vec::with_capacity(height.div_ceil(2) * width.div_ceil(2) * 4);
    for i in 0..height.div_ceil(2) {
        for j in 0..width.div_ceil(2) {
            for (dy, dx) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (y, x) = (2 * i + dy, 2 * j + dx);
                groups.push(if y < height && x < width { y * width + x } else { zero } as i64);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_undoes_partition_for_padded_shifted_grids() -> Result<(), String> {
        for (height, width, window, index) in [(13, 10, 3, 1), (7, 5, 3, 0), (4, 3, 3, 1), (12, 18, 5, 1)] {
            let layout = WindowLayout::new(height, width, window, index)?;
            let partition = layout.partition();
            assert_eq!(partition.len(), layout.windows() * layout.window_tokens());
            let back: Vec<i64> = layout.reverse().iter().map(|&slot| partition[slot as usize]).collect();
            let expected: Vec<i64> = (0..layout.tokens() as i64).collect();
            assert_eq!(back, expected, "{layout:?}");
        }
        Ok(())
    }

    /// A 4x4 grid in 2x2 windows shifted by 1: `torch.roll(x, (-1, -1))` puts token (1, 1) first, and the
    /// last window gathers the wrapped-around corner, split into four regions by the mask.
    #[test]
    fn partition_and_mask_follow_transformers_roll() -> Result<(), String> {
        let layout = WindowLayout::new(4, 4, 2, 1)?;
        assert_eq!(layout.shift, 1);
        assert_eq!(&layout.partition()[..4], &[5, 6, 9, 10]);
        assert_eq!(&layout.partition()[12..], &[15, 12, 3, 0]);
        let mask = layout.shift_mask().ok_or("no mask")?;
        assert!(mask[..16].iter().all(|m| *m == 0.0), "the first window is one region");
        let last = &mask[3 * 16..];
        for a in 0..4 {
            for b in 0..4 {
                assert_eq!(last[a * 4 + b], if a == b { 0.0 } else { -100.0 });
            }
        }
        Ok(())
    }

    #[test]
    fn grids_no_larger_than_the_window_do_not_shift_and_smaller_ones_fail() {
        assert_eq!(WindowLayout::new(7, 9, 7, 1).map(|l| l.shift), Ok(0));
        assert_eq!(WindowLayout::new(8, 9, 7, 1).map(|l| l.shift), Ok(3));
        assert!(WindowLayout::new(6, 9, 7, 0).is_err());
    }

    #[test]
    fn relative_position_index_matches_transformers() {
        // transformers' table for a 2x2 window.
        let expected = [4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4];
        assert_eq!(relative_position_index(2), expected);
    }

    #[test]
    fn merge_groups_pad_odd_sides_with_the_zero_token() {
        let groups = merge_groups(3, 3);
        assert_eq!(groups.len(), 4 * 4);
        assert_eq!(&groups[..4], &[0, 3, 1, 4]);
        assert_eq!(&groups[4..8], &[2, 5, 9, 9]);
        assert_eq!(&groups[12..], &[8, 9, 9, 9]);
    }
}
