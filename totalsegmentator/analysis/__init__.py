"""Analysis of finished segmentations: statistics, radiomics, combined masks, preview, contrast phase,
modality, Evans index and crop to body. Each submodule has one job; heavy parts (the segmentation pipeline,
pyradiomics, vtk) are imported only inside the functions that need them.

* ``statistics``: ``get_basic_statistics`` (statistics.json)
* ``radiomics``: ``get_radiomics_features_for_entire_dir`` (statistics_radiomics.json, needs pyradiomics)
* ``combine_masks``: ``combine_masks`` (totalseg_combine_masks)
* ``preview``: ``generate_preview`` (preview_<task>.png)
* ``phase``: ``phase_from_intensities``, ``get_ct_contrast_phase`` (totalseg_get_phase)
* ``modality``: ``modality_from_image``, ``get_modality_from_rois`` (totalseg_get_modality)
* ``evans_index``: ``evans_index_from_masks``, ``evans_index`` (totalseg_evans_index)
* ``crop_to_body``: ``crop_to_mask_bbox``, ``crop_to_body`` (crop_to_body)
"""
