//! diffusers' `DiagonalGaussianDistribution`: the encoder's posterior over latents.

use mlx::{random, Array};

/// A Gaussian with diagonal covariance, `[B, latent_channels, h, w]` each (NCHW).
#[derive(Clone, Debug)]
pub struct DiagonalGaussian {
    pub mean: Array,
    /// Clamped to `[-30, 20]`, as diffusers does, so that `exp` stays finite.
    pub logvar: Array,
}

impl DiagonalGaussian {
    /// The moments `[B, 2 * latent_channels, h, w]`: mean, then log-variance.
    pub fn from_moments(moments: &Array) -> DiagonalGaussian {
        let channels = moments.dim(1).unwrap_or(0);
        let half = (channels + 1) / 2; // torch.chunk's first part takes the odd channel
        let mean = moments.slice_axis(1, 0, half);
        let logvar = moments.slice_axis(1, half, channels);
        DiagonalGaussian {
            mean,
            logvar: logvar.clip(-30.0, 20.0),
        }
    }

    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Array {
        (&self.logvar * 0.5).exp()
    }

    /// `exp(logvar)`.
    pub fn var(&self) -> Array {
        self.logvar.exp()
    }

    /// The most likely latents: the mean.
    pub fn mode(&self) -> Array {
        self.mean.clone()
    }

    /// `mean + std · ε`, `ε ~ N(0, 1)` drawn from `key` (in the mean's dtype).
    pub fn sample(&self, key: &Array) -> Array {
        let noise = random::normal(self.mean.shape(), self.mean.dtype(), key);
        &self.mean + self.std() * noise
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx::Dtype;

    #[test]
    fn moments_split_into_mean_and_clamped_logvar() {
        // [1, 4, 1, 1]: mean (1, 2), logvar (-50, 0.5).
        let moments = Array::from_slice(&[1f32, 2.0, -50.0, 0.5], &[1, 4, 1, 1]);
        let posterior = DiagonalGaussian::from_moments(&moments);
        assert_eq!(posterior.mean.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(posterior.logvar.to_vec::<f32>().unwrap(), vec![-30.0, 0.5]);
        let std = posterior.std().to_vec::<f32>().unwrap();
        assert!((std[1] - 0.25f32.exp()).abs() < 1e-6 && (std[0] - (-15f32).exp()).abs() < 1e-12);
        assert_eq!(posterior.mode().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn samples_are_seeded_and_spread_by_std() {
        let n = 4096;
        let mut moments = vec![3f32; n];
        moments.extend(vec![2f32 * 0.5f32.ln(); n]); // std 0.5
        let posterior =
            DiagonalGaussian::from_moments(&Array::from_slice(&moments, &[1, 2 * n as i32, 1, 1]));
        let a = posterior.sample(&random::key(7)).to_vec::<f32>().unwrap();
        let b = posterior.sample(&random::key(7)).to_vec::<f32>().unwrap();
        let c = posterior.sample(&random::key(8)).to_vec::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().sum::<f32>() / n as f32;
        let sd = (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n as f32).sqrt();
        assert!(
            (mean - 3.0).abs() < 0.05 && (sd - 0.5).abs() < 0.05,
            "{mean} {sd}"
        );
        assert_eq!(posterior.sample(&random::key(0)).dtype(), Dtype::F32);
    }
}
