//! Layers of the zoo.
