//! AutoencoderKL.
