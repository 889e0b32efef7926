//! image1 (NDStdArrays): the newest frame as `ArrayData`, converted as areaDetector does.

use super::*;

impl Ioc {
    pub(super) fn post_preview(&self, shape: FrameShape, bytes: &[u8]) {
        let pv = self.pv(Pv::ImageArrayData);
        let max = pv.count();
        let value = image_value(pv.native_type(), shape.pixel_type, bytes, max);
        if let Err(e) = pv.post(value) {
            tracing::warn!("cannot post image1:ArrayData: {e}");
        }
    }
}

/// The waveform type of image1:ArrayData for frames of `pixel_type` (areaDetector's FTVL).
pub(super) fn image_native(pixel_type: PixelType) -> NativeType {
    match pixel_type {
        PixelType::U8 | PixelType::I8 => NativeType::Char,
        PixelType::U16 | PixelType::I16 => NativeType::Short,
        PixelType::U32 | PixelType::I32 => NativeType::Long,
        PixelType::F32 => NativeType::Float,
        PixelType::F64 => NativeType::Double,
    }
}

/// A frame's pixels as a waveform of `native` elements (at most `max`), as NDStdArrays
/// converts: each pixel cast to the waveform's type.
pub(super) fn image_value(
    native: NativeType,
    pixel_type: PixelType,
    bytes: &[u8],
    max: usize,
) -> Value {
    pub(super) fn cast<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
        bytes
            .chunks_exact(std::mem::size_of::<T>())
            .map(bytemuck::pod_read_unaligned)
            .collect()
    }
    let pixels: Vec<f64> = match pixel_type {
        // Same width as the waveform: reinterpret the bits, as a waveform of SHORTs holds
        // UInt16 pixels in areaDetector.
        PixelType::U8 | PixelType::I8 if native == NativeType::Char => {
            return Value::Char(bytes[..bytes.len().min(max)].into());
        }
        PixelType::U16 | PixelType::I16 if native == NativeType::Short => {
            let mut v: Vec<i16> = cast(bytes);
            v.truncate(max);
            return Value::Short(v.into());
        }
        PixelType::U32 | PixelType::I32 if native == NativeType::Long => {
            let mut v: Vec<i32> = cast(bytes);
            v.truncate(max);
            return Value::Long(v.into());
        }
        PixelType::U8 => bytes.iter().map(|&b| f64::from(b)).collect(),
        PixelType::I8 => bytes.iter().map(|&b| f64::from(b as i8)).collect(),
        PixelType::U16 => cast::<u16>(bytes).into_iter().map(f64::from).collect(),
        PixelType::I16 => cast::<i16>(bytes).into_iter().map(f64::from).collect(),
        PixelType::U32 => cast::<u32>(bytes).into_iter().map(f64::from).collect(),
        PixelType::I32 => cast::<i32>(bytes).into_iter().map(f64::from).collect(),
        PixelType::F32 => cast::<f32>(bytes).into_iter().map(f64::from).collect(),
        PixelType::F64 => cast::<f64>(bytes),
    };
    let pixels = &pixels[..pixels.len().min(max)];
    match native {
        NativeType::Char => Value::Char(pixels.iter().map(|&p| p as u8).collect()),
        NativeType::Short => Value::Short(pixels.iter().map(|&p| p as i16).collect()),
        NativeType::Long => Value::Long(pixels.iter().map(|&p| p as i32).collect()),
        NativeType::Float => Value::Float(pixels.iter().map(|&p| p as f32).collect()),
        _ => Value::Double(pixels.to_vec().into()),
    }
}
