use crate::{DataError, Result};

/// Which half of a dataset's official split to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// The official training images.
    Train,
    /// The official test images (Tiny-ImageNet: the labelled validation images).
    Test,
}

impl Split {
    /// The stable lowercase name used in file names, cache keys and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decoded images and their labels, held compactly as bytes so that a whole dataset fits in memory
/// and can be cached, sliced into disjoint owner / attacker splits, and batched without re-decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// Pixels, N x C x H x W, row-major, RGB channel order, values 0..=255.
    pub images: Vec<u8>,
    /// One label per image, each below `class_names.len()`.
    pub labels: Vec<u32>,
    /// Channels per image (3 for every built-in dataset).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Builds a set after checking that pixel and label counts agree and every label is in range,
    /// so a malformed set can never reach training.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u32>,
        (channels, height, width): (usize, usize, usize),
        class_names: Vec<String>,
    ) -> Result<Self> {
        let per_image = channels * height * width;
        if per_image == 0 || images.len() != labels.len() * per_image {
            return Err(DataError::Inconsistent(format!(
                "{} pixel bytes for {} labels of {channels}x{height}x{width} images",
                images.len(),
                labels.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= class_names.len())
        {
            return Err(DataError::Inconsistent(format!(
                "label {l} of image {i} is out of range for {} classes",
                class_names.len()
            )));
        }
        Ok(Self {
            images,
            labels,
            channels,
            height,
            width,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Bytes per image (C x H x W).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (C x H x W). Panics when `i` is out of range, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// A new set holding the given images in the given order (indices may repeat).
    /// Panics when an index is out of range: indices come from the harness, never from users.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        ImageSet {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// Images per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_label_out_of_range() {
        let err = ImageSet::new(
            vec![0; 2],
            vec![0, 2],
            (1, 1, 1),
            vec!["a".into(), "b".into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("label 2 of image 1"), "{err}");
    }

    #[test]
    fn new_rejects_pixel_count_mismatch() {
        assert!(ImageSet::new(vec![0; 3], vec![0, 0], (1, 1, 1), vec!["a".into()]).is_err());
    }

    #[test]
    fn select_copies_images_in_order() {
        let set = ImageSet::new(
            vec![1, 2, 3, 4],
            vec![0, 1],
            (1, 1, 2),
            vec!["a".into(), "b".into()],
        )
        .unwrap();
        let sub = set.select(&[1, 1, 0]);
        assert_eq!(sub.images, vec![3, 4, 3, 4, 1, 2]);
        assert_eq!(sub.labels, vec![1, 1, 0]);
        assert_eq!(sub.class_counts(), vec![1, 2]);
    }
}
