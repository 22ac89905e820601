/*!
The rsb trainer: ResNet-50 in burn, Mixup/CutMix, BCE, LAMB and the cosine schedule of the
"ResNet strikes back" recipes, fed by the loader.

Not built yet: this crate holds only its place in the workspace (see the trainer issue).
*/
#![deny(missing_docs)]
